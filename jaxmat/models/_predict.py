"""Batched, jit-compiled predictions of a model on a list of structures (``Model.predict``)."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from jaxmat._checks import at_least, check_value, one_of
from jaxmat.data import batch_budget
from jaxmat.graph import DEFAULT_CHECKS, PadSizes, StructureChecks, atoms_to_graph, batch_graphs, cast_floats, pad_graph


def _budget(graphs, batch_size: int) -> PadSizes:
    """``jaxmat.data.batch_budget`` rounded up to powers of two (fewer distinct compilations)."""
    b = batch_budget(graphs, batch_size)
    up = lambda x: int(2 ** np.ceil(np.log2(max(int(x), 8))))  # noqa: E731
    return PadSizes(up(b.n_node), up(b.n_edge), up(b.n_triplet), b.n_graph)


def host_graph_totals(values, graph_index, n_graph: int) -> np.ndarray:
    """(G,) float64 sums of per-node values (N,) on the host (exact for any number of atoms)."""
    return np.bincount(np.asarray(graph_index), weights=np.asarray(values, np.float64), minlength=n_graph)[:n_graph]


def warn_outside_domain(model, structures) -> None:
    """Warn when a model trained on periodic crystals only (``metadata["periodic_only"]``, e.g.
    MEGNet-MP-2018.6.1-Eform) is asked about molecules, slabs or isolated atoms."""
    if not model.metadata.get("periodic_only"):
        return
    loose = [k for k, a in enumerate(structures) if not np.all(a.pbc)]
    if loose:
        warnings.warn(
            f"model {model.name} was trained on periodic crystals only; structure(s) {loose[:10]} "
            f"{'(and more) ' if len(loose) > 10 else ''}are not periodic in all three directions (molecule, slab or "
            "isolated atom): its predictions for them are extrapolations with no known accuracy", UserWarning,
            stacklevel=3)


def predict_structures(model, structures, batch_size: int = 32, dtype: str = "float32", cache: dict | None = None,
            checks: StructureChecks = DEFAULT_CHECKS) -> np.ndarray:
    """Predictions for ``structures`` (list of ``ase.Atoms``) -> (len(structures),) numpy array.

    Graph models (MEGNet) give their target (e.g. formation energy, eV/atom); potentials give
    the total energy (eV). Raises ``UnknownElementError``/``StructureError`` on bad input.
    """
    check_value("Model.predict", "batch_size", batch_size, "int", at_least(1))
    check_value("Model.predict", "dtype", dtype, "str", one_of("float32", "float64"))
    if isinstance(structures, Atoms):
        raise TypeError("predict takes a list of ase.Atoms; wrap a single structure: predict([atoms])")
    structures = list(structures)
    for k, atoms in enumerate(structures):
        if not isinstance(atoms, Atoms):
            raise TypeError(f"predict takes a list of ase.Atoms; item {k} is a {type(atoms).__name__}")
    warn_outside_domain(model, structures)
    graphs = []
    for k, atoms in enumerate(structures):
        try:
            model.check_species(atoms.numbers)
            graphs.append(atoms_to_graph(atoms, model.cutoff, model.three_body_cutoff, checks))
        except ValueError as err:  # StructureError, UnknownElementError: say which structure
            raise type(err)(f"structure {k} ({atoms.get_chemical_formula()}): {err}") from None
    if not graphs:
        return np.zeros(0)
    batch_size = min(batch_size, len(graphs))
    budget = _budget(graphs, batch_size)
    cache = {} if cache is None else cache
    # potentials return per-atom energies, summed per structure in float64 on the host
    fn = cache.setdefault(("predict", dtype), jax.jit(model.apply))
    out = []
    with jax.enable_x64(dtype == "float64"):
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), model.params)
        for start in range(0, len(graphs), batch_size):
            chunk = graphs[start : start + batch_size]
            g = cast_floats(pad_graph(batch_graphs(chunk), budget), dtype)
            values = np.asarray(fn(params, g), np.float64)
            if model.output_kind != "graph":
                values = host_graph_totals(values, g.graph.nodes["graph_index"], budget.n_graph)
            out.append(values[: len(chunk)])
    return np.concatenate(out)
