"""Structure checks before a graph is built: validity, localised coordinates, collapse and size caps.

A structure reaches a model only after these checks (``atoms_to_graph`` runs them in order):

1. ``check_structure``: atoms present, finite positions and cell, positive periodic volume.
2. ``localize_positions``: positions wrapped into the cell along periodic directions and centred
   along non-periodic ones, in float64, so a float32 cast keeps its precision whatever the
   coordinates' distance from the origin (energies, forces and stress are invariant).
3. ``check_density``: before any neighbour search, the mean number of neighbours a periodic
   structure's density implies; a collapsed cell is refused before it can exhaust memory.
4. ``check_contacts``: every bond is longer than ``min_distance_factor`` x the sum of the two
   atoms' covalent radii (ASE's table), and no atom has more than ``max_neighbors`` neighbours.
5. ``check_triplets``: the number of three-body triplets, counted by ``build_triplets`` before it
   allocates them, is at most ``max_triplets``.

Thresholds live in ``StructureChecks`` (defaults documented in the README's "Bad input").
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np
from ase.data import chemical_symbols, covalent_radii

from jaxmat._checks import at_least, check_instance, non_negative
from jaxmat.errors import StructureError


@dataclasses.dataclass(frozen=True)
class StructureChecks:
    """Thresholds of the structure checks (see the module docstring).

    ``min_distance_factor`` 0.5: the closest pairs in the mlearn (Mo: 0.61), rMD17, 3BPA and
    reference sets are above 0.6 x the sum of covalent radii; Si at a = 1.7 A is at 0.33.
    ``max_neighbors`` 500 per atom: about 5x diamond's count within 5 A (the densest common
    solid). ``max_triplets`` 50 million per structure: a few GB of float32 work in M3GNet's forces.
    """

    min_distance_factor: float = 0.5  #: refuse bonds shorter than this x (r_cov,i + r_cov,j); 0: off
    max_neighbors: int = 500  #: most neighbours (edges within the cutoff) of any atom
    max_triplets: int = 50_000_000  #: most three-body triplets of one structure

    RULES: ClassVar[dict] = {"min_distance_factor": non_negative(), "max_neighbors": at_least(1),
                             "max_triplets": at_least(1)}

    def __post_init__(self):
        check_instance(self, "StructureChecks")


DEFAULT_CHECKS = StructureChecks()


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
        if 0 < volume <= 1e-6:
            raise StructureError(f"the periodic cell has volume {volume:.3g} A^3: far too small for atoms (lengths in "
                                 "m or nm instead of Angstrom?)")
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


def check_occupancy(info) -> None:
    """Refuse a disordered structure: ASE reads a CIF with partial occupancies as an ordered cell of
    one of the species (keeping ``info["occupancy"]``); a potential would evaluate that cell."""
    occupancy = info.get("occupancy") if isinstance(info, dict) else None
    if not isinstance(occupancy, dict):
        return

    def ordered(occ):  # one species, fully occupied
        return not isinstance(occ, dict) or (len(occ) == 1 and abs(float(next(iter(occ.values()))) - 1.0) < 1e-6)

    partial = {site: occ for site, occ in occupancy.items() if not ordered(occ)}
    if partial:
        site, occ = next(iter(partial.items()))
        raise StructureError(
            f"the structure has partially occupied sites (site {site}: {occ}; {len(partial)} site(s) in all): ASE reads "
            "them as an ordered cell of one species, which is not the material. Build an ordered supercell (e.g. "
            "special quasirandom structures) and evaluate that")


def lattice_basis(cell, pbc):
    """Rows: the periodic lattice vectors, then an orthonormal basis of their complement."""
    periodic = cell[pbc]
    if periodic.shape[0] == 3:
        return cell
    complement = np.linalg.svd(periodic)[2][periodic.shape[0]:]  # rows of V^T beyond the periodic span
    basis = np.empty((3, 3))
    basis[pbc], basis[~pbc] = periodic, complement
    return basis


def localize_positions(positions, cell, pbc) -> np.ndarray:
    """Positions moved by whole lattice vectors into the cell along periodic directions and
    centred (bounding box at the origin) along non-periodic ones; float64 (N, 3).

    Energies, forces and stress do not change (bonds are found anew from these positions); only
    the magnitude of the coordinates does, which keeps a later float32 cast exact to ~1e-7 A
    for an atom 1e5 A from the origin.
    """
    if not pbc.any():
        return positions - 0.5 * (positions.min(axis=0) + positions.max(axis=0))
    basis = lattice_basis(cell, pbc)
    frac = np.linalg.solve(basis.T, positions.T).T
    eps = 1e-9  # an atom at -1e-17 stays at 0, not at 1 (as ase.geometry.wrap_positions)
    frac[:, pbc] -= np.floor(frac[:, pbc] + eps)
    free = ~pbc
    frac[:, free] -= 0.5 * (frac[:, free].min(axis=0) + frac[:, free].max(axis=0))
    return frac @ basis


def check_density(n_atoms: int, cell, pbc, cutoff: float, checks: StructureChecks = DEFAULT_CHECKS) -> None:
    """Refuse, before any neighbour search, a cell whose periodic images alone would give its atoms
    far more than ``max_neighbors`` neighbours within ``cutoff`` (the exact per-atom count is
    checked by ``check_contacts``).

    Periodic in all three directions: the mean count, n / V x (4/3) pi rc^3, may not exceed twice
    ``max_neighbors``. Periodic in one or two: each atom's own images, (2 rc) / L or pi rc^2 / A
    for the periodic length or area, may not exceed twice ``max_neighbors``.
    """
    k = int(np.sum(pbc))
    if k == 0:
        return
    periodic = cell[pbc]
    measure = math.sqrt(abs(np.linalg.det(periodic @ periodic.T)))  # length, area or volume
    ball = {1: 2 * cutoff, 2: math.pi * cutoff**2, 3: 4.0 / 3.0 * math.pi * cutoff**3}[k]
    mean = ball / measure * (n_atoms if k == 3 else 1)
    if mean > 2 * checks.max_neighbors:
        what = {1: "periodic length", 2: "periodic area", 3: "cell volume"}[k]
        unit = {1: "A", 2: "A^2", 3: "A^3"}[k]
        raise StructureError(
            f"{n_atoms} atom(s), {what} {measure:.4g} {unit}: about {mean:.3g} neighbours per atom within {cutoff} A "
            f"(limit max_neighbors={checks.max_neighbors}); the cell has collapsed or its lattice vectors are in the "
            "wrong unit")


def check_contacts(numbers, senders, receivers, distances, checks: StructureChecks = DEFAULT_CHECKS) -> None:
    """Raise StructureError for a bond shorter than ``min_distance_factor`` x the sum of covalent
    radii (overlapping atoms or a collapsed structure) or an atom with more than ``max_neighbors``
    neighbours."""
    numbers = np.asarray(numbers)
    if senders.size and checks.min_distance_factor > 0:
        zi, zj = numbers[senders], numbers[receivers]
        limit = checks.min_distance_factor * (covalent_radii[zi] + covalent_radii[zj])
        close = distances < limit
        if close.any():
            k = int(np.argmin(distances / limit))
            i, j = int(senders[k]), int(receivers[k])
            pair = (f"atom {i} ({chemical_symbols[zi[k]]}) and its own periodic image" if i == j else
                    f"atoms {i} ({chemical_symbols[zi[k]]}) and {j} ({chemical_symbols[zj[k]]})")
            raise StructureError(
                f"{pair} overlap: {distances[k]:.3g} A apart, closer than {checks.min_distance_factor:g} x the sum of "
                f"their covalent radii ({limit[k]:.3g} A); the structure has collapsed (compressed cell, wrong unit, duplicated atom). "
                "StructureChecks(min_distance_factor=...) sets the limit")
    if senders.size:
        counts = np.bincount(senders, minlength=numbers.size)
        worst = int(np.argmax(counts))
        if counts[worst] > checks.max_neighbors:
            raise StructureError(
                f"atom {worst} ({chemical_symbols[numbers[worst]]}) has {int(counts[worst])} neighbours within the "
                f"cutoff (limit max_neighbors={checks.max_neighbors}): the structure is far denser than any solid")


def check_triplets(n_triplets: int, n_atoms: int, checks: StructureChecks = DEFAULT_CHECKS) -> None:
    """Raise StructureError if a structure has more than ``max_triplets`` triplets (called by
    ``build_triplets`` before it allocates them)."""
    if n_triplets > checks.max_triplets:
        raise StructureError(
            f"the structure ({n_atoms} atoms) has {n_triplets:,} three-body triplets, more than max_triplets="
            f"{checks.max_triplets:,}: it would not fit in memory. Split it, or raise StructureChecks(max_triplets=...) "
            "if the machine has the memory")
