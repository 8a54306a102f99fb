"""The on-device engine (jaxmat.simulate): ASE-equal NVE, canonical Langevin sampling, neighbour-list
rebuilds that change nothing, overflow that is never silent, batch == one by one, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, fcc111, molecule
from ase.md.verlet import VelocityVerlet

from jaxmat.calculators import JaxmatCalculator
from jaxmat._checks import ConfigError
from jaxmat.errors import SimulationError
from jaxmat.graph import PadSizes, StructureError
from jaxmat.md import MDSettings, thermalize
from jaxmat.simulate import Engine, NeighborOverflowError


@pytest.fixture(scope="module")
def mixed_engine():
    """One float64 engine for the mixed batch and each of its structures alone: with 50 % headroom
    the first batch's capacity holds them all, so the module compiles its chunk once."""
    return Engine(dtype="float64", skin=0.5, headroom=0.5)


def _si(reps=1, seed=0, rattle=0.05):
    a = bulk("Si", "diamond", 5.43, cubic=True).repeat(reps)
    a.rattle(rattle, seed=seed)
    return a


def _mixed():
    """A triclinic cell smaller than the cutoff (many images), a slab, a molecule and a cubic cell."""
    tri = bulk("Cu", "fcc", 3.61).repeat((2, 1, 1))  # primitive fcc x 2: 60-degree cell, 2.55 A edges
    tri.rattle(0.02, seed=1)
    slab = fcc111("Cu", (2, 2, 2), vacuum=6.0)
    slab.rattle(0.02, seed=2)
    mol = molecule("CH4")
    mol.rattle(0.02, seed=4)
    return [tri, slab, mol, _si(seed=3)]


def test_nve_equals_ase_velocity_verlet():
    """Rattled Si64, float64, 40 steps of 1 fs: the jitted trajectory is ASE's to 1e-6 A (the longer
    NVE run is ``test_nve_drift_is_small``)."""
    atoms = _si(2, seed=4)
    thermalize(atoms, 600.0, np.random.default_rng(7))
    ref = atoms.copy()
    ref.calc = JaxmatCalculator(dtype="float64")
    VelocityVerlet(ref, 1.0 * units.fs).run(40)
    out = Engine(dtype="float64", skin=0.5).md([atoms], MDSettings(ensemble="nve", steps=40, log_every=20,
                                                                   temperature=600.0),
                      trajectory=None, thermalize_momenta=False, log=lambda line: None)
    final = out["final"][0]
    assert np.abs(final.positions - ref.positions).max() < 1e-6
    assert abs(out["epot"][-1][0] - ref.get_potential_energy()) < 1e-6
    assert np.abs(final.get_momenta() - ref.get_momenta()).max() < 1e-6


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_nve_drift_is_small():
    """0.3 ps of NVE (float32, 1 fs) for two replicas; the 5 ps figure is in the benchmark."""
    eng = Engine(dtype="float32", skin=0.5)
    out = eng.md([_si(seed=5), _si(seed=6)], MDSettings(ensemble="nve", temperature=600.0, steps=300, log_every=50),
                 trajectory=None, log=lambda line: None)
    etot = out["etotal"] / 8
    drift = np.abs(etot - etot[0]).max()
    print(f"NVE Si8 x 2, 0.5 ps, float32: max drift {drift * 1e3:.3f} meV/atom; rebuilds {out['n_rebuilds']}")
    assert drift < 2e-3


@pytest.mark.parametrize("R,steps", [pytest.param(8, 400, marks=pytest.mark.slow), pytest.param(16, 1500, marks=pytest.mark.slow)])
def test_langevin_replicas_sample_the_canonical_ensemble(R, steps):
    """Replicas of Si8 at 600 K: the mean temperature and the variance of the kinetic energy match
    the canonical values (3N/2 kT and 3N/2 (kT)^2) within their statistical errors."""
    T, n = 600.0, 8
    eng = Engine(dtype="float32", skin=0.5)
    out = eng.md([_si(seed=10 + r) for r in range(R)], MDSettings(temperature=T, friction=0.1, steps=steps,
                                                                  log_every=10),
                 trajectory=None, log=lambda line: None)
    ekin = out["ekin"][10:]  # (samples, R) after 100 fs (10 friction times); samples 10 fs apart
    kT = units.kB * T
    mean_ref, var_ref = 1.5 * n * kT, 1.5 * n * kT**2
    per_replica_mean = ekin.mean(axis=0)
    se_mean = per_replica_mean.std(ddof=1) / np.sqrt(R)
    assert abs(per_replica_mean.mean() - mean_ref) < 4 * se_mean + 0.01 * mean_ref
    per_replica_var = ekin.var(axis=0, ddof=1)
    se_var = per_replica_var.std(ddof=1) / np.sqrt(R)
    assert abs(per_replica_var.mean() - var_ref) < 4 * se_var + 0.05 * var_ref, (per_replica_var.mean(), var_ref)


def test_rebuilds_happen_and_change_nothing(mixed_engine):
    """Hot Langevin MD of the mixed batch with skin 0.5 A (many rebuilds) and 2.0 A (few): the same
    trajectory to round-off."""
    settings = MDSettings(temperature=1500.0, steps=40, log_every=20, seed=3)
    small, large = mixed_engine, Engine(dtype="float64", skin=2.0)
    small.n_rebuilds = 0
    a = small.md(_mixed(), settings, trajectory=None, log=lambda line: None)
    b = large.md(_mixed(), settings, trajectory=None, log=lambda line: None)
    assert small.n_rebuilds > large.n_rebuilds and small.n_rebuilds >= 2
    for x, y in zip(a["final"], b["final"]):
        assert np.abs(x.positions - y.positions).max() < 1e-8
    np.testing.assert_allclose(a["epot"], b["epot"], rtol=0, atol=1e-8)


def test_capacity_overflow_is_never_silent():
    atoms = [_si(seed=1)]
    tiny = PadSizes(n_node=16, n_edge=64, n_triplet=64, n_graph=2)
    with pytest.raises(NeighborOverflowError, match="capacity"):
        Engine(capacity=tiny, grow=False).md(atoms, MDSettings(steps=2), trajectory=None, log=lambda line: None)
    lines = []
    eng = Engine(capacity=tiny)
    eng.md(atoms, MDSettings(steps=2), trajectory=None, log=lines.append)
    assert eng.n_grown == 1 and any("capacity grown" in line for line in lines)
    assert eng.capacity.n_triplet > 64


def test_batched_replicas_equal_one_by_one(mixed_engine):
    """A triclinic many-image cell, a slab, a molecule and Si8 in one padded batch: each equals its
    own run."""
    settings = MDSettings(temperature=800.0, steps=30, log_every=15, seed=11)
    batched = mixed_engine.md(_mixed(), settings, seeds=[1, 2, 3, 4], trajectory=None, log=lambda line: None)
    for k, atoms in enumerate(_mixed()):
        alone = mixed_engine.md([atoms], settings, seeds=[k + 1], trajectory=None, log=lambda line: None)
        assert np.abs(alone["final"][0].positions - batched["final"][k].positions).max() < 1e-8
        np.testing.assert_allclose(alone["epot"][:, 0], batched["epot"][:, k], rtol=0, atol=1e-8)


def test_engine_forces_equal_the_calculator(mixed_engine, calc64):
    """The masked skinned lists give the calculator's energy and forces on every kind of cell."""
    out = mixed_engine.md(_mixed(), MDSettings(steps=0, temperature=0.0), trajectory=None,
                          log=lambda line: None)
    for atoms, final in zip(_mixed(), out["final"]):
        atoms.calc = calc64
        assert abs(final.get_potential_energy() - atoms.get_potential_energy()) < 1e-8
        assert np.abs(final.get_forces() - atoms.get_forces()).max() < 1e-8


def test_runaway_temperature_stops_with_a_message():
    with pytest.raises(SimulationError, match=r"replica 1: MD stopped at step \d+.*temperature"):
        Engine().md([_si(seed=1), _si(seed=2)], MDSettings(temperature=300.0, max_temperature=400.0, steps=200,
                                                          ensemble="nve", timestep=1.0),
                    temperatures=[300.0, 3000.0], trajectory=None, log=lambda line: None)


def test_bad_structures_are_named():
    bad = _si(seed=1)
    bad.positions[1] = bad.positions[0] + [0.2, 0.0, 0.0]  # atoms on top of each other
    with pytest.raises(StructureError, match="replica 1"):
        Engine().md([_si(), bad], MDSettings(steps=5), trajectory=None, log=lambda line: None)
    nan = _si()
    nan.positions[3, 0] = np.nan
    with pytest.raises(StructureError, match="replica 0"):
        Engine().md([nan], MDSettings(steps=5), trajectory=None, log=lambda line: None)
    with pytest.raises(ValueError, match="jax engine only|periodic"):
        Engine().md([Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]])], MDSettings(ensemble="npt", steps=1),
                    trajectory=None)


@pytest.mark.parametrize("steps", [pytest.param(150, marks=pytest.mark.slow), pytest.param(1000, marks=pytest.mark.slow)])
def test_ge_at_1000K_compiles_at_most_3_times(steps):
    """Sizes come from the skinned lists, so Ge's second shell on the three-body cutoff does not
    recompile the jax engine either."""
    eng = Engine()
    eng.md([bulk("Ge", "diamond", 5.658, cubic=True).repeat(2)], MDSettings(temperature=1000.0, steps=steps,
                                                                           log_every=50),
           trajectory=None, log=lambda line: None)
    assert eng.n_compilations <= 3, eng.n_compilations


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_nose_hoover_holds_the_temperature_and_npt_finds_the_volume(tmp_path):
    """Nose-Hoover at 500 K keeps the mean temperature of four Si8 replicas near the target;
    C-rescale NPT at 0 GPa shrinks a 4 %-stretched Cu4 cell towards equilibrium, and 5 GPa (a
    second replica in the same batch) makes it smaller still."""
    out = Engine().md([_si(seed=k) for k in range(4)], MDSettings(
        ensemble="nose_hoover", temperature=500.0, thermostat_time=20.0, steps=200, log_every=20),
        trajectory=str(tmp_path / "nh.traj"), log=lambda line: None)
    assert abs(out["temperature"][3:].mean() - 500.0) < 75.0
    cu = bulk("Cu", "fcc", 3.61 * 1.04, cubic=True)
    volumes, eng = {}, Engine()
    for p in (0.0, 5.0):
        res = eng.md([cu, cu], MDSettings(ensemble="npt", temperature=300.0, pressure=p, barostat_time=50.0,
                                               compressibility=0.01, steps=120, log_every=60),
                          trajectory=None, log=lambda line: None)
        volumes[p] = np.mean([a.get_volume() for a in res["final"]])
    assert volumes[5.0] < volumes[0.0] < cu.get_volume() * 0.97, (volumes, cu.get_volume())


def test_a_skin_thinner_than_one_step_is_an_error_not_a_hang():
    """A list that goes stale in the first step after its rebuild would be rebuilt for ever."""
    a = bulk("Si", "diamond", 5.43, cubic=True)
    settings = MDSettings(temperature=3000, steps=20, timestep=5.0, log_every=10)
    with pytest.raises(ConfigError, match="half the skin"):
        Engine(skin=0.01).md([a], settings, trajectory=None, log=lambda *a: None)
