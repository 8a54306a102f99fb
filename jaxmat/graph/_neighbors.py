"""Host-side graph construction: directed edges (vesin) and three-body triplets (numpy)."""

from __future__ import annotations

import numpy as np
import vesin

from jaxmat.graph._structure import DEFAULT_CHECKS, StructureChecks, check_triplets, lattice_basis

#: bonds up to ``cutoff + CUTOFF_TOLERANCE`` [A] are kept, as pymatgen's find_points_in_spheres
#: (used by matgl) does: a bond of exactly the cutoff length is a bond (MEGNet is not smooth there).
CUTOFF_TOLERANCE = 1e-8


def searched_pbc(positions, cell, pbc, cutoff: float) -> np.ndarray:
    """The periodic directions the neighbour search must follow: a periodic direction whose cell
    height exceeds the atoms' spread across it plus the cutoff has no image within the cutoff, so
    it is searched as open (the same bonds; and vesin 0.6 crashes, SIGFPE, on such cells, e.g. a
    wire in 2000 x 2000 A of vacuum)."""
    pbc = np.array(pbc, bool)
    if not pbc.any():
        return pbc
    basis = lattice_basis(cell, pbc)
    normals = np.linalg.inv(basis).T  # row i: reciprocal vector of direction i (1 / height long)
    for i in np.flatnonzero(pbc):
        unit = normals[i] / np.linalg.norm(normals[i])
        height = 1.0 / np.linalg.norm(normals[i])
        proj = positions @ unit
        if height - (proj.max() - proj.min()) > cutoff + 1.0:
            pbc[i] = False
    return pbc


def neighbor_edges(positions, cell, pbc, cutoff: float, neighbor_list=None):
    """Directed edges of length <= ``cutoff`` (+ ``CUTOFF_TOLERANCE``), both directions, all images.

    Args:
      positions: (N, 3) float64, Angstrom.
      cell: (3, 3) float64, rows are lattice vectors.
      pbc: (3,) bool.
      cutoff: Angstrom.
      neighbor_list: a reusable ``vesin.NeighborList`` with cutoff ``cutoff + CUTOFF_TOLERANCE``
        (e.g. one with a Verlet skin kept by a calculator between MD steps); made if None.

    Returns:
      senders (E,), receivers (E,) int32; shifts (E, 3) int32; distances (E,) float64.
      Edges are sorted by receiver, then sender.
    """
    nl = neighbor_list or vesin.NeighborList(cutoff=float(cutoff) + CUTOFF_TOLERANCE, full_list=True)
    i, j, shifts, d = nl.compute(positions, cell, searched_pbc(positions, cell, pbc, cutoff), quantities="ijSd")
    order = np.lexsort((i, j))
    return (
        i[order].astype(np.int32),
        j[order].astype(np.int32),
        shifts[order].astype(np.int32),
        d[order],
    )


def build_triplets(senders, distances, n_nodes: int, cutoff: float, checks: StructureChecks = DEFAULT_CHECKS):
    """All ordered pairs of distinct bonds (i->j, i->k) with both lengths <= ``cutoff``.

    Vectorised over atoms. Returns ``(edge_ij, edge_ik)`` int32 arrays sorted by ``edge_ij``.
    Raises StructureError, before allocating them, if there are more than ``checks.max_triplets``.
    """
    bonds = np.flatnonzero(distances <= cutoff)
    bonds = bonds[np.argsort(senders[bonds], kind="stable")]  # grouped by source atom
    src = senders[bonds]
    counts = np.bincount(src, minlength=n_nodes)
    check_triplets(int(np.sum(counts.astype(np.int64) * (counts - 1))), n_nodes, checks)
    group_start = np.cumsum(counts) - counts
    per_bond = counts[src]  # each bond pairs with every bond of its group (itself dropped below)
    first = np.repeat(np.arange(bonds.size), per_bond)
    offset = np.arange(first.size) - np.repeat(np.cumsum(per_bond) - per_bond, per_bond)
    second = group_start[src][first] + offset
    keep = first != second
    edge_ij, edge_ik = bonds[first[keep]], bonds[second[keep]]
    order = np.argsort(edge_ij, kind="stable")
    return edge_ij[order].astype(np.int32), edge_ik[order].astype(np.int32)
