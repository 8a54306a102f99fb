"""Physics checks of the default pretrained model (reusable helpers in jaxmat.testing)."""

import numpy as np
import pytest
from ase.build import bulk, fcc111, molecule

from jaxmat import testing


@pytest.fixture
def si8():
    a = bulk("Si", "diamond", 5.43, cubic=True)
    a.rattle(0.05, seed=1)
    return a


@pytest.fixture
def mgo_triclinic(reference_frames):
    return reference_frames["MgO_triclinic"].copy()


def test_forces_finite_differences(calc64, si8, reference_frames):
    testing.assert_forces_match_finite_differences(calc64, si8, atol=1e-6)
    testing.assert_forces_match_finite_differences(calc64, reference_frames["H2O_molecule"], atol=1e-6)


def test_stress_finite_differences(calc64, si8, mgo_triclinic):
    testing.assert_stress_matches_finite_differences(calc64, si8, atol=1e-7)
    testing.assert_stress_matches_finite_differences(calc64, mgo_triclinic, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_invariances(calc64, calc32, si8, mgo_triclinic, reference_frames, dtype):
    calc = calc64 if dtype == "float64" else calc32
    atol_e, atol_f = (1e-8, 1e-8) if dtype == "float64" else (2e-4, 2e-4)
    rng = np.random.default_rng(42)
    for atoms in (si8, mgo_triclinic, reference_frames["H2O_molecule"], reference_frames["LiFePO4_olivine"]):
        testing.assert_invariant(calc, atoms, rng, atol_e=atol_e * len(atoms), atol_f=atol_f)


def test_supercell_extensive(calc64, mgo_triclinic):
    testing.assert_extensive(calc64, mgo_triclinic, (2, 2, 2), rtol=1e-9)
    testing.assert_extensive(calc64, bulk("Cu", "fcc", 3.6), (2, 2, 2), rtol=1e-9)


def test_slab_mixed_pbc_equals_periodic_with_vacuum(calc64):
    slab = fcc111("Cu", (2, 2, 3), vacuum=7.0, periodic=True)  # 14 A of vacuum > 5 A cutoff
    slab.rattle(0.02, seed=3)
    mixed = slab.copy()
    mixed.pbc = [True, True, False]
    slab.calc, mixed.calc = calc64, calc64
    assert mixed.get_potential_energy() == pytest.approx(slab.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(mixed.get_forces(), slab.get_forces(), atol=1e-9)
    # the same slab with its (irrelevant) non-periodic cell vector set to zero
    flat = mixed.copy()
    flat.cell[2] = 0.0
    flat.calc = calc64
    assert flat.get_potential_energy() == pytest.approx(slab.get_potential_energy(), abs=1e-9)


@pytest.mark.parametrize("cutoff_name", ["cutoff", "three_body_cutoff"])
def test_energy_continuous_at_cutoffs(calc64, model, cutoff_name):
    rc = getattr(model, cutoff_name)
    for symbols in ("SiSiSi", "NaClO"):
        jumps = testing.energy_across_cutoff(calc64, symbols, rc, deltas=(1e-3, 1e-5, 1e-7))
        assert jumps[-1] < 1e-7, f"{symbols}: energy jumps by {jumps} across the {cutoff_name} {rc}"
        assert jumps[-1] < jumps[0] or jumps[0] < 1e-9  # vanishes as the step shrinks


def test_float32_close_to_float64(calc64, calc32, si8):
    a, b = si8.copy(), si8.copy()
    a.calc, b.calc = calc64, calc32
    assert abs(a.get_potential_energy() - b.get_potential_energy()) / len(si8) < 5e-5
    assert np.abs(a.get_forces() - b.get_forces()).max() < 2e-3


def test_molecule_energy_forces(calc64):
    m = molecule("CH3CH2OH")
    m.calc = calc64
    assert np.isfinite(m.get_potential_energy())
    assert np.abs(m.get_forces().sum(axis=0)).max() < 1e-9  # no net force on an isolated molecule
