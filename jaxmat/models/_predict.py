"""Batched, jit-compiled predictions over many structures: one core (``run_batches``) and the
front end of ``Model.predict`` (``predict_structures``). The labelled-frame front ends
(``jaxmat.train.predict_frames``, ``jaxmat.train.predict_members``) run the same core."""

from __future__ import annotations

import warnings
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from jaxmat._checks import at_least, check_value, one_of
from jaxmat.data import batch_budget
from jaxmat.graph import DEFAULT_CHECKS, PadSizes, StructureChecks, atoms_to_graph, batch_graphs, cast_floats, pad_graph


def _budget(graphs, graphs_per_batch: int) -> PadSizes:
    """``jaxmat.data.batch_budget`` rounded up to powers of two (fewer distinct compilations)."""
    b = batch_budget(graphs, graphs_per_batch)
    up = lambda x: int(2 ** np.ceil(np.log2(max(int(x), 8))))  # noqa: E731
    return PadSizes(up(b.n_node), up(b.n_edge), up(b.n_triplet), b.n_graph)


def host_graph_totals(values, graph_index, n_graph: int) -> np.ndarray:
    """(..., G) float64 sums of per-node values (..., N) on the host (exact for any number of
    atoms); leading axes (e.g. ensemble members) are summed one row at a time."""
    values, index = np.asarray(values, np.float64), np.asarray(graph_index)
    if values.ndim == 1:
        return np.bincount(index, weights=values, minlength=n_graph)[:n_graph]
    rows = [np.bincount(index, weights=v, minlength=n_graph)[:n_graph] for v in values.reshape(-1, values.shape[-1])]
    return np.stack(rows).reshape(*values.shape[:-1], n_graph)


def check_batching(where: str, graphs_per_batch, dtype) -> None:
    """ConfigError (``jaxmat._checks``) unless ``graphs_per_batch`` >= 1 and ``dtype`` is a float type."""
    check_value(where, "graphs_per_batch", graphs_per_batch, "int", at_least(1))
    check_value(where, "dtype", dtype, "str", one_of("float32", "float64"))


def run_batches(fn: Callable, params, batches: Iterable, dtype: str) -> list[tuple[list, dict]]:
    """The core of every batched prediction: ``fn(params, graph)`` (jitted, returning a dict) on
    each ``(indices, padded graph)`` of ``batches`` with the float leaves of ``params`` cast to
    ``dtype`` ("float64" runs under ``jax.enable_x64``; ``batches`` is consumed inside it).

    Returns ``[(indices, results)]`` with host (numpy) results; where ``fn`` gives per-atom
    ``energies`` (..., N) [eV], ``energy`` is replaced by their per-structure totals (..., G),
    summed in float64 on the host (``host_graph_totals``).
    """
    out = []
    with jax.enable_x64(dtype == "float64"):
        p = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)
        for indices, g in batches:
            res = jax.device_get(fn(p, g))
            if "energies" in res:
                res["energy"] = host_graph_totals(res["energies"], g.graph.nodes["graph_index"], g.n_graph)
            out.append((indices, res))
    return out


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


def _structure_graphs(model, structures, checks: StructureChecks) -> list:
    """Host graphs of ``structures`` (a list of ``ase.Atoms``) for ``model``'s cutoffs; errors name
    the structure (its index and formula)."""
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
    return graphs


def predict_structures(model, structures, graphs_per_batch: int = 32, dtype: str = "float32",
                       cache: dict | None = None, checks: StructureChecks = DEFAULT_CHECKS) -> np.ndarray:
    """Predictions for ``structures`` (list of ``ase.Atoms``) -> (len(structures),) float64 numpy array.

    Graph models (MEGNet) give their target (e.g. formation energy, eV/atom); potentials give
    the total energy (eV), summed per structure in float64 on the host. Structures are batched in
    order, ``graphs_per_batch`` at a time, padded to one power-of-two budget. ``cache``: where the
    jitted function is kept between calls (``Model._cache``). Raises
    ``UnknownElementError``/``StructureError`` on bad input.
    """
    check_batching("Model.predict", graphs_per_batch, dtype)
    graphs = _structure_graphs(model, structures, checks)
    if not graphs:
        return np.zeros(0)
    graphs_per_batch = min(graphs_per_batch, len(graphs))
    budget = _budget(graphs, graphs_per_batch)
    cache = {} if cache is None else cache
    key = "energies" if model.output_kind != "graph" else "energy"
    fn = cache.setdefault(("predict", dtype), jax.jit(lambda p, g: {key: model.apply(p, g)}))
    starts = range(0, len(graphs), graphs_per_batch)
    batches = ((range(s, min(s + graphs_per_batch, len(graphs))),
                cast_floats(pad_graph(batch_graphs(graphs[s : s + graphs_per_batch]), budget), dtype)) for s in starts)
    results = run_batches(fn, model.params, batches, dtype)
    return np.concatenate([np.asarray(res["energy"], np.float64)[: len(idx)] for idx, res in results])
