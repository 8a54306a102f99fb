"""Reusable physics checks for any jaxmat potential behind an ASE calculator.

Each ``assert_*`` function evaluates the calculator on transformed copies of a structure and
raises AssertionError with the measured deviation; it returns that deviation so tests and
benchmarks can report it. Use a float64 calculator for finite-difference checks.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms


def _eval(calc, atoms, stress=False):
    a = atoms.copy()
    a.calc = calc
    out = {"energy": a.get_potential_energy(), "forces": a.get_forces()}
    if stress:
        out["stress"] = a.get_stress(voigt=False)
    return out


def assert_forces_match_finite_differences(calc, atoms, delta=1e-4, atol=1e-5, atoms_to_check=None):
    """Central differences of the energy vs. the forces, for a few atoms (default: 3)."""
    ref = _eval(calc, atoms)["forces"]
    idx = atoms_to_check if atoms_to_check is not None else range(min(3, len(atoms)))
    worst = 0.0
    for i in idx:
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, k] += delta
            minus.positions[i, k] -= delta
            fd = -(_eval(calc, plus)["energy"] - _eval(calc, minus)["energy"]) / (2 * delta)
            worst = max(worst, abs(fd - ref[i, k]))
    assert worst <= atol, f"forces differ from finite differences by {worst:.3g} eV/A (atol {atol})"
    return worst


def assert_stress_matches_finite_differences(calc, atoms, delta=1e-5, atol=1e-6):
    """(1/V) dE/d(strain) by central differences (strain on cell and positions) vs. the stress."""
    ref = _eval(calc, atoms, stress=True)["stress"]
    volume = atoms.get_volume()
    worst = 0.0
    for i in range(3):
        for j in range(3):
            energies = []
            for sign in (1, -1):
                eps = np.zeros((3, 3))
                eps[i, j] = eps[j, i] = sign * delta  # symmetric strain: stress is symmetric
                a = atoms.copy()
                a.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
                energies.append(_eval(calc, a)["energy"])
            fd = (energies[0] - energies[1]) / (2 * delta) / volume / (1 if i == j else 2)
            worst = max(worst, abs(fd - ref[i, j]))
    assert worst <= atol, f"stress differs from finite differences by {worst:.3g} eV/A^3 (atol {atol})"
    return worst


def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def assert_invariant(calc, atoms, rng=None, atol_e=1e-6, atol_f=1e-5):
    """Energy invariant and forces covariant under rotation, translation, permutation and
    wrapping atoms by lattice vectors (the last only for periodic directions)."""
    rng = rng or np.random.default_rng(0)
    ref = _eval(calc, atoms)
    n = len(atoms)
    worst = {"energy": 0.0, "forces": 0.0}

    def compare(name, a, f_map):
        out = _eval(calc, a)
        de, df = abs(out["energy"] - ref["energy"]), np.abs(f_map(out["forces"]) - ref["forces"]).max()
        worst["energy"], worst["forces"] = max(worst["energy"], de), max(worst["forces"], df)
        assert de <= atol_e and df <= atol_f, f"{name}: |dE| {de:.3g} eV, max |dF| {df:.3g} eV/A"

    rot = random_rotation(rng)
    a = atoms.copy()
    a.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    a.positions = atoms.positions @ rot.T
    compare("rotation", a, lambda f: f @ rot)

    a = atoms.copy()
    a.positions += rng.normal(size=3) * 3.0
    compare("translation", a, lambda f: f)

    perm = rng.permutation(n)
    compare("permutation", atoms[perm], lambda f: f[np.argsort(perm)])

    if atoms.pbc.any():
        a = atoms.copy()
        shifts = rng.integers(-2, 3, size=(n, 3)) * atoms.pbc
        a.positions += shifts @ atoms.cell.array
        compare("lattice wrapping", a, lambda f: f)
    return worst


def assert_extensive(calc, atoms, reps=(2, 2, 2), rtol=1e-6):
    """Energy of a supercell equals the number of copies times the energy of the cell."""
    e1 = _eval(calc, atoms)["energy"]
    e2 = _eval(calc, atoms.repeat(reps))["energy"]
    n = int(np.prod(reps))
    err = abs(e2 - n * e1) / (n * len(atoms))
    assert err <= rtol * max(1.0, abs(e1) / len(atoms)), f"supercell energy off by {err:.3g} eV/atom"
    return err


def energy_across_cutoff(calc, symbols: str, cutoff: float, deltas=(1e-3, 1e-5, 1e-7), spectator=2.2):
    """Energy jumps |E(cutoff - d) - E(cutoff + d)| for a neighbour crossing ``cutoff``.

    A right-angled three-atom molecule: atom 1 at ``spectator`` A from atom 0 and atom 2 at
    ``cutoff +- d`` from atom 0 (farther from atom 1), so the 0-2 bond, and every triplet through
    it, enters or leaves the graph. A continuous energy gives jumps that shrink like d.
    """
    jumps = []
    for d in deltas:
        es = []
        for r in (cutoff - d, cutoff + d):
            pos = [[0, 0, 0], [spectator, 0, 0], [0, r, 0]]
            es.append(_eval(calc, Atoms(symbols, positions=pos))["energy"])
        jumps.append(abs(es[0] - es[1]))
    return np.asarray(jumps)


def assert_property_invariant(predict, atoms, rng=None, reps=(2, 1, 2), atol=1e-6):
    """A structure -> property model (``predict(list_of_atoms) -> array``) is invariant under
    rotation, translation, permutation, lattice wrapping and (intensive) a periodic supercell.
    All variants are predicted in one batch, so batch == single is checked too."""
    rng = rng or np.random.default_rng(0)
    n = len(atoms)
    variants = {"identity": atoms.copy()}
    rot = random_rotation(rng)
    a = atoms.copy()
    a.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    a.positions = atoms.positions @ rot.T
    variants["rotation"] = a
    a = atoms.copy()
    a.positions += rng.normal(size=3) * 3.0
    variants["translation"] = a
    variants["permutation"] = atoms[rng.permutation(n)]
    if atoms.pbc.any():
        a = atoms.copy()
        a.positions += (rng.integers(-2, 3, size=(n, 3)) * atoms.pbc) @ atoms.cell.array
        variants["lattice wrapping"] = a
    if atoms.pbc.all():
        variants["supercell"] = atoms.repeat(reps)
    single = float(np.asarray(predict([atoms]))[0])
    batch = np.asarray(predict(list(variants.values())))
    worst = {name: abs(float(v) - single) for name, v in zip(variants, batch)}
    bad = {k: f"{v:.3g}" for k, v in worst.items() if v > atol}
    assert not bad, f"property changes under {bad} (atol {atol})"
    return worst
