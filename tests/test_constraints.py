"""Constraints in the jax engine (issue 45 items 1, 2, 17): a POSCAR with selective dynamics (ASE reads it
as FixAtoms + FixScaled) relaxes to the ASE engine's result with the fixed atoms where they were, MD never
moves them, the relax output carries the true forces, what the engine cannot honour is refused by name,
and both MD engines print one log format."""

from __future__ import annotations

import re

import ase.io
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.constraints import FixAtoms, FixBondLength, FixBondLengths, FixCartesian, FixScaled

from jaxmat.errors import ConfigError
from jaxmat.md import MDSettings, load_structure, run_md
from jaxmat.relax import RelaxSettings, relax_ase, write_relaxed
from jaxmat.simulate import Engine
from jaxmat.simulate._constraints import free_mask

FIXED = [0, 1]  # FixAtoms (F F F in the POSCAR)
PARTIAL = 2  # FixScaled: x and z fixed, y free (F T F)


@pytest.fixture(scope="module")
def poscar(tmp_path_factory):
    """A strained, rattled Si8 POSCAR with selective dynamics, as a user would bring it."""
    si = bulk("Si", "diamond", 5.43, cubic=True)
    si.set_cell(si.cell * 1.02, scale_atoms=True)
    si.rattle(0.1, seed=3)
    si.set_constraint([FixAtoms(FIXED), FixScaled(PARTIAL, [True, False, True])])
    path = tmp_path_factory.mktemp("sd") / "POSCAR"
    ase.io.write(path, si, format="vasp", direct=True)
    assert "Selective dynamics" in path.read_text()
    return path


@pytest.fixture(scope="module")
def sd_atoms(poscar):
    atoms = ase.io.read(poscar)
    assert {type(c).__name__ for c in atoms.constraints} == {"FixAtoms", "FixScaled"}
    return atoms


@pytest.fixture(scope="module")
def langevin_run(sd_atoms):
    """Langevin MD (float64, 600 K) of two replicas: the selective-dynamics structure and the same one
    without constraints (a padded batch with a mixed mask)."""
    free = sd_atoms.copy()
    free.set_constraint()
    lines = []
    out = Engine(dtype="float64", skin=0.5).md([sd_atoms, free], MDSettings(temperature=600.0, steps=10, log_every=5),
                                               trajectory=None, log=lines.append)
    return out, lines


def test_md_never_moves_fixed_atoms(sd_atoms, langevin_run):
    out, _ = langevin_run
    final, moved = out["final"]
    assert np.array_equal(final.positions[FIXED], sd_atoms.positions[FIXED])  # bit for bit
    assert np.array_equal(final.positions[PARTIAL, [0, 2]], sd_atoms.positions[PARTIAL, [0, 2]])
    assert abs(final.positions[PARTIAL, 1] - sd_atoms.positions[PARTIAL, 1]) > 1e-4  # its free direction moves
    assert np.all(final.get_momenta()[FIXED] == 0.0)
    assert np.abs(final.positions[3:] - sd_atoms.positions[3:]).max() > 1e-3  # the free atoms move
    assert np.abs(moved.positions[FIXED] - sd_atoms.positions[FIXED]).max() > 1e-3  # (and do without the constraint)


@pytest.mark.parametrize("ensemble", [pytest.param("nve", marks=pytest.mark.slow),
                                      pytest.param("nose_hoover", marks=pytest.mark.slow)])
def test_md_never_moves_fixed_atoms_other_integrators(sd_atoms, ensemble):
    out = Engine(dtype="float64", skin=0.5).md([sd_atoms], MDSettings(ensemble=ensemble, temperature=600.0, steps=10,
                                                                      log_every=10), trajectory=None,
                                               log=lambda line: None)
    final = out["final"][0]
    assert np.array_equal(final.positions[FIXED], sd_atoms.positions[FIXED])
    assert np.array_equal(final.positions[PARTIAL, [0, 2]], sd_atoms.positions[PARTIAL, [0, 2]])


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_npt_keeps_fixed_atoms_fractional_and_logs_volume_and_pressure(sd_atoms, calc64):
    """NPT scales the cell; a fixed atom follows it (its fractional coordinates stay, as under ASE's
    NPT-Berendsen). The log line and the returned log carry the volume (A^3) and the pressure (GPa)."""
    lines = []
    out = Engine(dtype="float64", skin=0.5).md([sd_atoms], MDSettings(ensemble="npt", temperature=300.0, pressure=2.0,
                                                                      barostat_time=50.0, steps=10, log_every=5),
                                               trajectory=None, log=lines.append)
    final = out["final"][0]
    assert abs(final.get_volume() / sd_atoms.get_volume() - 1) > 1e-5  # the cell moved
    frac0, frac = sd_atoms.get_scaled_positions(wrap=False), final.get_scaled_positions(wrap=False)
    assert np.abs(frac[FIXED] - frac0[FIXED]).max() < 1e-12
    assert all(re.search(r"  V +\d+\.\d+ A\^3  P +-?\d+\.\d+ GPa", line) for line in lines) and len(lines) == 3
    assert out["volume"].shape == out["pressure"].shape == (3, 1)
    assert out["volume"][0, 0] == pytest.approx(sd_atoms.get_volume(), rel=1e-12)
    ref = sd_atoms.copy()
    ref.calc = calc64
    p0 = 2 * out["ekin"][0, 0] / (3 * ref.get_volume()) - np.trace(ref.get_stress(voigt=False)) / 3
    assert out["pressure"][0, 0] == pytest.approx(p0 / units.GPa, abs=1e-6)


def _relax_both(atoms, calc, fix_cell: bool):
    """The jax engine's and the ASE engine's relaxation of ``atoms`` (float64, fmax 0.01)."""
    settings = RelaxSettings(fmax=0.01, steps=400, fix_cell=fix_cell)
    return Engine(dtype="float64").relax([atoms], settings)[0], relax_ase(atoms, calc, settings)


@pytest.fixture(scope="module")
def relaxed_fixed_cell(sd_atoms, calc64):
    return _relax_both(sd_atoms, calc64, fix_cell=True)


def _check_same_relaxation(sd_atoms, mine, ref, fix_cell):
    assert mine.converged and ref.converged
    assert mine.energy_per_atom == pytest.approx(ref.energy_per_atom, abs=1e-5)
    assert np.abs(mine.atoms.positions - ref.atoms.positions).max() < 2e-3
    if fix_cell:
        assert np.array_equal(mine.atoms.positions[FIXED], sd_atoms.positions[FIXED])  # bit for bit
        assert np.array_equal(mine.atoms.positions[PARTIAL, [0, 2]], sd_atoms.positions[PARTIAL, [0, 2]])
    else:
        frac0, frac = sd_atoms.get_scaled_positions(wrap=False), mine.atoms.get_scaled_positions(wrap=False)
        assert np.abs(frac[FIXED] - frac0[FIXED]).max() < 1e-12
        assert np.abs(frac[PARTIAL, [0, 2]] - frac0[PARTIAL, [0, 2]]).max() < 1e-12
    assert np.abs(mine.atoms.positions[3:] - sd_atoms.positions[3:]).max() > 0.01  # the free atoms relaxed


def test_jax_relax_of_a_selective_dynamics_poscar_matches_ase(sd_atoms, relaxed_fixed_cell):
    """Both engines relax the POSCAR (--fix-cell) to the same energy and positions; the jax engine
    leaves the fixed coordinates where they were, bit for bit."""
    _check_same_relaxation(sd_atoms, *relaxed_fixed_cell, fix_cell=True)


@pytest.mark.slow  # (a second compilation: FIRE with the cell's degrees of freedom)
def test_jax_relax_with_the_cell_of_a_selective_dynamics_poscar_matches_ase(sd_atoms, calc64):
    """With the cell relaxing, a fixed atom keeps its fractional coordinates (as under ASE's
    FrechetCellFilter), and the energies agree."""
    _check_same_relaxation(sd_atoms, *_relax_both(sd_atoms, calc64, fix_cell=False), fix_cell=False)


def test_relaxed_extxyz_carries_the_true_forces(relaxed_fixed_cell, calc64, tmp_path):
    """relaxed.extxyz (``write_relaxed``, as ``jaxmat relax`` writes it) is training data: the forces
    on fixed atoms are those a fresh calculator gives, not the constraint's zeros, from either engine."""
    for engine, record in zip(("jax", "ase"), relaxed_fixed_cell):
        out = tmp_path / f"{engine}.extxyz"
        assert write_relaxed([record], out) == 1
        written = ase.io.read(out)
        fresh = written.copy()
        fresh.set_constraint()
        fresh.calc = calc64
        forces = written.get_forces(apply_constraint=False)
        assert np.abs(forces - fresh.get_forces()).max() < 1e-5, engine
        assert np.linalg.norm(forces[FIXED], axis=1).min() > 0.05, engine  # really not zero there


@pytest.mark.parametrize("constraint, match", [
    (FixBondLength(3, 4), r"replica 0: constraint FixBondLengths is not supported by the jax engine"),
    (FixCartesian(3, [True, False, False]), r"constraint FixCartesian is not supported"),
])
def test_constraints_the_engine_cannot_honour_are_refused_by_name(constraint, match):
    si = bulk("Si", "diamond", 5.43, cubic=True)
    si.set_constraint(constraint)
    engine = Engine()
    with pytest.raises(ConfigError, match=match):
        engine.md([si], MDSettings(steps=1), trajectory=None)
    with pytest.raises(ConfigError, match=match.replace("replica 0", "#0")):
        engine.relax([si], RelaxSettings())
    tilted = bulk("Si", "diamond", 5.43)  # primitive fcc cell: a partial FixScaled is no Cartesian mask
    tilted.set_constraint(FixScaled(0, [True, False, False]))
    with pytest.raises(ConfigError, match=r"FixScaled\(indices=\[0\], mask=\[True, False, False\]\).*not orthogonal"):
        engine.relax([tilted], RelaxSettings(), names=["tilted"])
    tilted.set_constraint(FixScaled(0))  # all three directions fixed: FixAtoms in effect, fine on any cell
    assert free_mask(tilted).tolist() == [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]


def test_a_constraint_ase_cannot_repeat_into_the_md_supercell_is_a_clear_error(tmp_path):
    si = bulk("Si", "diamond", 5.43, cubic=True)
    si.set_constraint(FixBondLengths([[3, 4]]))
    ase.io.write(tmp_path / "si.traj", si)  # jaxmat md repeats a small cell to >= 64 atoms
    with pytest.raises(ConfigError, match=r"carries constraint\(s\) FixBondLengths that ASE cannot repeat.*1 1 1"):
        load_structure(str(tmp_path / "si.traj"))
    # and the advice it gives works (red team #04: --supercell 1 1 1 still called atoms.repeat and failed)
    kept = load_structure(str(tmp_path / "si.traj"), supercell=(1, 1, 1))
    assert len(kept) == 8 and type(kept.constraints[0]).__name__ == "FixBondLengths"


def test_both_md_engines_log_one_format(sd_atoms, langevin_run, calc64):
    """The ASE engine's and the jax engine's log lines have the same fields and units (energies per atom)
    and the same numbers at step 0 (same structure, same seed; the temperature counts the constrained
    degrees of freedom in both)."""
    out, jax_lines = langevin_run
    ase_lines = []
    atoms = sd_atoms.copy()
    log = run_md(atoms, calc64, MDSettings(temperature=600.0, steps=0, log_every=5), trajectory=None,
                 log=ase_lines.append)

    def skeleton(line):
        line = re.sub(r" \(\d+-\d+\)", "", line.split("ms/step")[0])  # (the replicas' temperature range)
        return re.sub(r"-?\d+\.?\d*", "#", line).split()

    assert skeleton(ase_lines[0]) == skeleton(jax_lines[0])
    assert "Epot" in ase_lines[0] and skeleton(ase_lines[0]).count("eV/atom") == 3
    assert out["epot"][0, 0] == pytest.approx(log["epot"][0], abs=1e-8)
    assert out["ekin"][0, 0] == pytest.approx(log["ekin"][0], abs=1e-10)
    assert out["temperature"][0, 0] == pytest.approx(log["temperature"][0], rel=1e-10)
