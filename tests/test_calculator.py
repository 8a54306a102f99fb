"""The ASE calculator: results, global-state hygiene, compilation count during MD, NVE drift."""

import jax
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.md.verlet import VelocityVerlet

from jaxmat.calculators import JaxmatCalculator
from jaxmat.md import thermalize


def test_results_and_per_atom_energies(calc32):
    atoms = bulk("NaCl", "rocksalt", 5.64, cubic=True)
    atoms.calc = calc32
    e = atoms.get_potential_energy()
    assert atoms.calc.results["free_energy"] == e
    np.testing.assert_allclose(atoms.get_potential_energies().sum(), e, rtol=1e-6)
    assert atoms.get_stress().shape == (6,)
    assert -3.6 < e / len(atoms) < -3.1  # NaCl about -3.36 eV/atom (README of shared/)


def test_float64_does_not_flip_global_x64():
    before = jax.config.jax_enable_x64
    calc = JaxmatCalculator(dtype="float64")
    atoms = bulk("Si", "diamond", 5.43)
    atoms.calc = calc
    atoms.get_potential_energy()
    assert jax.config.jax_enable_x64 == before
    assert jax.numpy.ones(1).dtype == (jax.numpy.float64 if before else jax.numpy.float32)


def test_compressed_silicon_has_negative_stress(calc64):
    atoms = bulk("Si", "diamond", 5.2)  # strongly compressed
    atoms.calc = calc64
    assert np.all(atoms.get_stress()[:3] < 0)


def _nve(atoms, calc, temperature, steps, seed=0):
    atoms.calc = calc
    thermalize(atoms, temperature, np.random.default_rng(seed))
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    etot = []
    dyn.attach(lambda: etot.append(atoms.get_total_energy()), interval=10)
    dyn.run(steps)
    return np.asarray(etot)


@pytest.mark.parametrize("steps", [150, pytest.param(1000, marks=pytest.mark.slow)])
def test_md_at_1000K_compiles_at_most_3_times(steps):
    """Diamond Ge's second shell sits at 4.0007 A, on the three-body cutoff: as atoms vibrate the
    triplet count jumps between 12 and 240 per atom. The buckets are sized with a margin beyond the
    cutoff, so this does not recompile (it compiled 5 times in 100 steps before)."""
    atoms = bulk("Ge", "diamond", 5.658, cubic=True).repeat(2)
    calc = JaxmatCalculator()
    _nve(atoms, calc, 2000.0, steps)  # equipartition: starts at 2000 K, settles near 1000 K within ~100 fs
    assert 500 < atoms.get_temperature() < 1600
    assert calc.n_compilations <= 3, calc.n_compilations


@pytest.mark.parametrize("steps", [pytest.param(300, marks=pytest.mark.slow), pytest.param(1000, marks=pytest.mark.slow)])
def test_nve_energy_drift_si64(calc64, steps):
    """NVE of Si64 from 600 K, 1 fs steps: 0.3 ps by default, 1 ps with ``-m slow`` (the drift
    is reported in the closing note). Total energy within 1 meV/atom of the start throughout."""
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(2)
    etot = _nve(atoms, calc64, 600.0, steps, seed=1)
    drift = np.abs(etot - etot[0]).max() / len(atoms)
    fluct = etot.std() / len(atoms)
    print(f"NVE Si64 {steps} fs: max drift {drift * 1e3:.3f} meV/atom, std {fluct * 1e3:.3f} meV/atom")
    assert drift < 1e-3 and fluct < 1e-3


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_cached_neighbour_list_follows_cell_changes(calc64):
    """The calculator keeps a skinned vesin list between calls; changing the cell (NPT, cell
    relaxation) or moving atoms must give the same results as a fresh calculator."""
    fresh = JaxmatCalculator(dtype="float64", skin=0.0)
    atoms = bulk("Cu", "fcc", 3.6, cubic=True).repeat(2)
    for scale in (1.0, 0.97, 1.0004, 1.05):
        a = atoms.copy()
        a.set_cell(atoms.cell * scale, scale_atoms=True)
        a.rattle(0.05, seed=int(scale * 1e4))
        a.calc = calc64
        e1, s1 = a.get_potential_energy(), a.get_stress()
        a.calc = fresh
        assert a.get_potential_energy() == pytest.approx(e1, abs=1e-9)
        np.testing.assert_allclose(a.get_stress(), s1, atol=1e-10)
