"""Verlet neighbour lists for the on-device engine: built on the host (vesin), checked on the device.

A list is a padded, batched ``AtomicGraph`` of *candidate* bonds, every pair within
``cutoff + skin`` and every triplet of bonds within ``three_body_cutoff + skin``, built at reference
positions and cells. While the atoms move, each step masks the candidates by their current lengths
(``effective_graph``: bonds <= cutoff, triplets of bonds <= three-body cutoff, exactly the edges and
triplets ``atoms_to_graph`` would build), so the model sees the same graph as the ASE path, and
``still_valid`` says, on the device, whether a bond can have formed outside the candidates:

    valid  iff  s_min(M) (c + skin) - 2 max|r - r_ref M| > c   for c = cutoff and three-body cutoff,

with M = cell_ref^-1 cell the affine deformation since the build (identity at fixed cell) and
s_min its smallest singular value. When it fails the engine rebuilds and re-runs the step; nothing is
ever dropped. The padded sizes (capacity) come from the skinned lists, so they do not jump when a
neighbour shell sits on a cutoff; when a rebuild needs more, the capacity grows (one compilation) or,
with ``grow=False``, ``NeighborOverflowError`` is raised.

Positions stay unwrapped (as the user's): the integer cell shifts are corrected for the lattice
translations that the graph builder's wrapping applied.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.errors import RefusedStructure, StructureError
from jaxmat.graph import (
    CUTOFF_TOLERANCE,
    DEFAULT_CHECKS,
    AtomicGraph,
    PadSizes,
    atoms_to_graph,
    batch_graphs,
    cast_floats,
    graph_sizes,
    grow_sizes,
    lattice_basis,
    pad_graph,
)


class Lists(NamedTuple):
    """Device neighbour data: the padded candidate graph (its positions and cells are the reference)."""

    graph: AtomicGraph


def unwrapped_graph(atoms, cutoff: float, three_body_cutoff: float | None, checks=DEFAULT_CHECKS):
    """``atoms_to_graph`` with the atoms' own (unwrapped) positions and shifts that match them.

    The builder wraps positions into the cell: wrapped = pos + n @ cell (n integer along periodic
    directions; a common translation along open ones). A bond i->j with shift S between wrapped
    positions is the bond with shift S + n_j - n_i between the original ones.
    """
    g = atoms_to_graph(atoms, cutoff, three_body_cutoff, checks)
    G = g.graph
    pos = np.asarray(atoms.positions, np.float64)
    wrapped = G.nodes["positions"]
    pbc = np.asarray(atoms.pbc, bool)
    n = np.zeros_like(pos)
    if pbc.any():
        basis = lattice_basis(np.asarray(atoms.cell.array, np.float64), pbc)
        frac = np.linalg.solve(basis.T, (wrapped - pos).T).T
        n[:, pbc] = np.round(frac[:, pbc])
    shifts = G.edges["shifts"] + n[G.receivers] - n[G.senders]
    G = G._replace(nodes={**G.nodes, "positions": pos}, edges={**G.edges, "shifts": shifts})
    return AtomicGraph(G, g.triplets)


def build_lists(systems, cutoff: float, three_body_cutoff: float | None, skin: float, dtype,
                capacity: PadSizes | None = None, headroom: float = 0.1, growth: float = 1.3, grow: bool = True,
                checks=DEFAULT_CHECKS):
    """Candidate lists of a batch of structures (``ase.Atoms`` with current positions and cells).

    Returns ``(lists, capacity, real)``: device ``Lists``, the padded sizes used and the real sizes.
    A structure the checks refuse raises ``StructureError`` (the caller names the structure).
    """
    tb = None if three_body_cutoff is None else three_body_cutoff + skin
    graphs = []
    for k, a in enumerate(systems):
        try:
            graphs.append(unwrapped_graph(a, cutoff + skin, tb, checks))
        except StructureError as err:
            raise RefusedStructure(k, err) from err
    g = batch_graphs(graphs)
    real = graph_sizes(g)
    capacity = grow_sizes(real, capacity, headroom, growth, grow)
    g = cast_floats(pad_graph(g, capacity), dtype)
    return Lists(jax.tree_util.tree_map(jnp.asarray, g)), capacity, real


def effective_graph(lists: Lists, positions, cell, cutoff: float, three_body_cutoff: float | None) -> AtomicGraph:
    """The graph the model sees at ``positions`` (N, 3) and ``cell`` (G, 3, 3): the candidates with
    bonds longer than ``cutoff`` (+ the builder's tolerance) and triplets with a bond longer than the
    three-body cutoff masked out."""
    g = lists.graph
    G = g.graph
    vec = positions[G.receivers] - positions[G.senders] + jnp.einsum(
        "ei,eij->ej", G.edges["shifts"], cell[G.nodes["graph_index"][G.senders]])
    r2 = jax.lax.stop_gradient(jnp.sum(vec * vec, axis=1))
    emask = G.edges["mask"] & (r2 <= (cutoff + CUTOFF_TOLERANCE) ** 2)
    T = g.triplets
    if three_body_cutoff is not None and T.edge_ij.shape[0]:
        short = emask & (r2 <= three_body_cutoff**2)
        T = T._replace(mask=T.mask & short[T.edge_ij] & short[T.edge_ik])
    G = G._replace(nodes={**G.nodes, "positions": positions}, edges={**G.edges, "mask": emask},
                   globals={**G.globals, "cell": cell})
    return AtomicGraph(G, T)


def deformation(ref_cell, cell, periodic):
    """Per-structure affine map M (G, 3, 3) with cell = ref_cell @ M (identity where not periodic)."""
    eye = jnp.eye(3, dtype=cell.dtype)
    safe_ref = jnp.where(periodic[:, None, None], ref_cell, eye)
    safe = jnp.where(periodic[:, None, None], cell, eye)
    return jnp.linalg.solve(safe_ref, safe)


def still_valid(lists: Lists, positions, cell, cutoff: float, three_body_cutoff: float | None, skin: float):
    """Per-structure bool (G,): no bond or triplet can be missing from the candidates (see the module
    docstring). Padding structures are always valid."""
    G = lists.graph.graph
    gi = G.nodes["graph_index"]
    n_graph = G.n_node.shape[0]
    periodic = jnp.all(G.globals["pbc"], axis=1)
    M = deformation(G.globals["cell"], cell, periodic)
    moved = positions - jnp.einsum("ni,nij->nj", G.nodes["positions"], M[gi])
    d = jnp.sqrt(jnp.sum(moved * moved, axis=1)) * G.nodes["mask"]
    dmax = jax.ops.segment_max(d, gi, num_segments=n_graph)
    dmax = jnp.maximum(dmax, 0.0)  # (segment_max of an empty padding structure is -inf)
    smin = jnp.linalg.svd(M, compute_uv=False)[:, -1]
    ok = jnp.ones(n_graph, bool)
    for c in (cutoff,) + (() if three_body_cutoff is None else (three_body_cutoff,)):
        ok = ok & (smin * (c + skin) - 2.0 * dmax > c + CUTOFF_TOLERANCE)
    return ok | ~G.globals["mask"]
