"""Batched, jit-compiled predictions of a model on a list of structures (``Model.predict``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from jaxmat.graph import PadSizes, atoms_to_graph, batch_graphs, cast_floats, pad_graph


def _budget(graphs, batch_size: int) -> PadSizes:
    """``jaxmat.data.batch_budget`` rounded up to powers of two (fewer distinct compilations)."""
    from jaxmat.data import batch_budget

    b = batch_budget(graphs, batch_size)
    up = lambda x: int(2 ** np.ceil(np.log2(max(int(x), 8))))  # noqa: E731
    return PadSizes(up(b.n_node), up(b.n_edge), up(b.n_triplet), b.n_graph)


def per_graph_outputs(model, graph):
    """(G,) per-graph predictions: the model's own output for graph models, the summed per-atom
    energies [eV] for potentials."""
    out = model.apply(model.params, graph)
    if model.output_kind == "graph":
        return out
    G = graph.graph
    return jraph.segment_sum(out, G.nodes["graph_index"], num_segments=G.n_node.shape[0])


def predict(model, structures, batch_size: int = 32, dtype: str = "float32", cache: dict | None = None) -> np.ndarray:
    """Predictions for ``structures`` (list of ``ase.Atoms``) -> (len(structures),) numpy array.

    Graph models (MEGNet) give their target (e.g. formation energy, eV/atom); potentials give
    the total energy (eV). Raises ``UnknownElementError``/``StructureError`` on bad input.
    """
    structures = list(structures)
    graphs = []
    for atoms in structures:
        model.check_species(atoms.numbers)
        graphs.append(atoms_to_graph(atoms, model.cutoff, model.three_body_cutoff))
    if not graphs:
        return np.zeros(0)
    batch_size = max(1, min(batch_size, len(graphs)))
    budget = _budget(graphs, batch_size)
    cache = {} if cache is None else cache
    fn = cache.setdefault(("predict", dtype), jax.jit(lambda p, g: per_graph_outputs(model.with_params(p), g)))
    out = []
    with jax.enable_x64(dtype == "float64"):
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), model.params)
        for start in range(0, len(graphs), batch_size):
            chunk = graphs[start : start + batch_size]
            g = cast_floats(pad_graph(batch_graphs(chunk), budget), dtype)
            out.append(np.asarray(fn(params, g))[: len(chunk)])
    return np.concatenate(out).astype(np.float64)
