"""Host-side graph construction: checks, directed edges (vesin) and three-body triplets (numpy)."""

from __future__ import annotations

import numpy as np
import vesin

#: Two atoms closer than this (Angstrom) are reported as overlapping.
DEFAULT_MIN_DISTANCE = 0.2


class StructureError(ValueError):
    """An input structure that no potential can evaluate meaningfully."""


def check_structure(positions, cell, pbc) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and normalise a structure; returns float64 positions, cell and bool pbc.

    Raises StructureError for an empty structure, non-finite positions or cell, or a periodic
    cell whose periodic lattice vectors span zero or negative volume.
    """
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise StructureError(f"positions must have shape (n_atoms, 3), got {positions.shape}")
    if positions.shape[0] == 0:
        raise StructureError("the structure has no atoms")
    bad = ~np.isfinite(positions).all(axis=1)
    if bad.any():
        raise StructureError(
            f"positions of atoms {np.flatnonzero(bad)[:10].tolist()} are not finite (NaN or inf)"
        )
    if not np.isfinite(cell).all():
        raise StructureError("the cell contains NaN or inf")
    if pbc.all():
        volume = np.linalg.det(cell)
        if not volume > 1e-6:
            raise StructureError(
                f"the periodic cell has volume {volume:.6g} A^3; it must be positive "
                "(rows of the cell are lattice vectors and must form a right-handed basis)"
            )
    elif pbc.any():
        periodic = cell[pbc]
        gram = periodic @ periodic.T
        if not np.linalg.det(gram) > 1e-10:
            raise StructureError(
                f"the periodic lattice vectors {periodic.tolist()} are degenerate (zero area/length)"
            )
    return positions, cell, pbc


#: bonds up to ``cutoff + CUTOFF_TOLERANCE`` [A] are kept, as pymatgen's find_points_in_spheres
#: (used by matgl) does: a bond of exactly the cutoff length is a bond (MEGNet is not smooth there).
CUTOFF_TOLERANCE = 1e-8


def neighbor_edges(
    positions, cell, pbc, cutoff: float, min_distance: float = DEFAULT_MIN_DISTANCE, neighbor_list=None
):
    """Directed edges of length <= ``cutoff`` (+ ``CUTOFF_TOLERANCE``), both directions, all images.

    Args:
      positions: (N, 3) float64, Angstrom.
      cell: (3, 3) float64, rows are lattice vectors.
      pbc: (3,) bool.
      cutoff: Angstrom.
      min_distance: raise StructureError if two atoms (or an atom and an image) are closer.
      neighbor_list: a reusable ``vesin.NeighborList`` with cutoff ``cutoff + CUTOFF_TOLERANCE``
        (e.g. one with a Verlet skin kept by a calculator between MD steps); made if None.

    Returns:
      senders (E,), receivers (E,) int32; shifts (E, 3) int32; distances (E,) float64.
      Edges are sorted by receiver, then sender.
    """
    nl = neighbor_list or vesin.NeighborList(cutoff=float(cutoff) + CUTOFF_TOLERANCE, full_list=True)
    i, j, shifts, d = nl.compute(positions, cell, pbc, quantities="ijSd")
    close = d < min_distance
    if close.any():
        k = int(np.flatnonzero(close)[0])
        raise StructureError(
            f"atoms {int(i[k])} and {int(j[k])} overlap (distance {d[k]:.3g} A < {min_distance} A)"
        )
    order = np.lexsort((i, j))
    return (
        i[order].astype(np.int32),
        j[order].astype(np.int32),
        shifts[order].astype(np.int32),
        d[order],
    )


def build_triplets(senders, distances, n_nodes: int, cutoff: float):
    """All ordered pairs of distinct bonds (i->j, i->k) with both lengths <= ``cutoff``.

    Vectorised over atoms. Returns ``(edge_ij, edge_ik)`` int32 arrays sorted by ``edge_ij``.
    """
    bonds = np.flatnonzero(distances <= cutoff)
    bonds = bonds[np.argsort(senders[bonds], kind="stable")]  # grouped by source atom
    src = senders[bonds]
    counts = np.bincount(src, minlength=n_nodes)
    group_start = np.cumsum(counts) - counts
    per_bond = counts[src]  # each bond pairs with every bond of its group (itself dropped below)
    first = np.repeat(np.arange(bonds.size), per_bond)
    offset = np.arange(first.size) - np.repeat(np.cumsum(per_bond) - per_bond, per_bond)
    second = group_start[src][first] + offset
    keep = first != second
    edge_ij, edge_ik = bonds[first[keep]], bonds[second[keep]]
    order = np.argsort(edge_ij, kind="stable")
    return edge_ij[order].astype(np.int32), edge_ik[order].astype(np.int32)
