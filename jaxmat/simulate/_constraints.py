"""ASE constraints the on-device engine honours, as a per-atom, per-direction mask.

``free_mask(atoms)`` turns ``FixAtoms`` and ``FixScaled`` (what ASE reads from a POSCAR with selective
dynamics) into an (n, 3) array of 1 (free) and 0 (fixed), or None for a structure without
constraints. The integrators and FIRE multiply forces and momenta by it (``constrain``), so a fixed
coordinate never changes: bit for bit with a fixed cell; with a moving cell (NPT, relaxation of the
cell) a fixed atom keeps its fractional coordinates and follows the cell, as ASE's
``FrechetCellFilter`` and NPT-Berendsen do.

A ``FixScaled`` that fixes only some cell directions is a Cartesian mask only when the cell is
orthogonal with its vectors along x, y and z (a diagonal cell matrix); elsewhere it is refused, as is
every other constraint class (``ConfigError`` naming it).
"""

from __future__ import annotations

import numpy as np
from ase.constraints import FixAtoms, FixScaled

from jaxmat.errors import ConfigError

SUPPORTED = "FixAtoms and FixScaled (selective dynamics)"


def _diagonal(cell) -> bool:
    cell = np.asarray(cell, np.float64)
    scale = np.max(np.abs(cell)) if cell.size else 0.0
    off = cell - np.diag(np.diag(cell))
    return scale > 0 and np.all(np.abs(np.diag(cell)) > 0) and np.max(np.abs(off)) <= 1e-9 * scale


def free_mask(atoms, where: str = "") -> np.ndarray | None:
    """(n, 3) float64: 1 where the coordinate may move, 0 where a constraint fixes it; None without
    constraints. ``where`` prefixes the error (e.g. the structure's name).

    Raises ``ConfigError`` naming the class of a constraint the engine cannot honour.
    """
    if not atoms.constraints:
        return None
    free = np.ones((len(atoms), 3))
    for c in atoms.constraints:
        index = np.asarray(getattr(c, "index", []), int)
        if type(c) is FixAtoms:
            free[index] = 0.0
        elif type(c) is FixScaled and np.all(c.mask):
            free[index] = 0.0
        elif type(c) is FixScaled:
            if not _diagonal(atoms.cell.array):
                raise ConfigError(
                    f"{where}FixScaled(indices={index.tolist()}, mask={np.asarray(c.mask).tolist()}) fixes only some "
                    "cell directions of a cell that is not orthogonal along x, y, z: the jax engine fixes Cartesian "
                    "directions only. Use --engine ase (Engine: run it through ASE), or fix all three directions")
            free[np.ix_(index, np.flatnonzero(c.mask))] = 0.0
        else:
            raise ConfigError(f"{where}constraint {type(c).__name__} is not supported by the jax engine, which honours "
                              f"only {SUPPORTED}: remove it or use --engine ase")
    return free


def masks_of(structures, names=None) -> list | None:
    """``free_mask`` of each structure, or None when none has a constraint (the engine then compiles
    exactly the unconstrained code)."""
    masks = [free_mask(a, f"{names[k]}: " if names else f"structure {k}: ") for k, a in enumerate(structures)]
    return masks if any(m is not None for m in masks) else None


def degrees_of_freedom(atoms) -> int:
    """3 n minus the coordinates the constraints remove (ASE's ``get_temperature`` convention)."""
    return 3 * len(atoms) - sum(int(c.get_removed_dof(atoms)) for c in atoms.constraints)
