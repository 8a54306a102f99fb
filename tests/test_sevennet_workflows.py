"""SevenNet-0 (no triplets) through every workflow: both MD engines, batched replicas, both
relaxation engines, fine-tuning with frozen groups into a deep ensemble, and the ensemble's
calculator. Float64 where two paths must agree to round-off."""

from __future__ import annotations

import json

import ase.io
import jax
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.md.verlet import VelocityVerlet

import jaxmat
from helpers import FIXTURES
from jaxmat.calculators import JaxmatCalculator
from jaxmat.md import MDSettings, thermalize
from jaxmat.relax import RelaxSettings, relax_ase
from jaxmat.simulate import Engine

QUIET = {"trajectory": None, "log": lambda line: None}


def _si8(seed=0, rattle=0.05, strain=1.0):
    a = bulk("Si", "diamond", 5.43 * strain, cubic=True)
    a.rattle(rattle, seed=seed)
    return a


def _mgo():
    a = bulk("MgO", "rocksalt", 4.3).repeat((2, 1, 1))
    a.rattle(0.03, seed=5)
    return a


@pytest.fixture(scope="module")
def calc64():
    """One float64 calculator for every ASE-side run (its first bucket holds all of them)."""
    return JaxmatCalculator("SevenNet-0", dtype="float64", headroom=1.0)


@pytest.fixture(scope="module")
def engine64():
    """One float64 engine: the first (batched) run's capacity holds every later run."""
    return Engine(model="SevenNet-0", dtype="float64", skin=0.5, headroom=0.5)


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_jax_md_equals_ase_and_batches(engine64, calc64):
    """NVE: the on-device engine follows ASE's VelocityVerlet on the calculator; two structures
    batched give each one's own trajectory."""
    structures = [_si8(seed=1), _mgo()]
    for k, a in enumerate(structures):
        thermalize(a, 500.0, np.random.default_rng(k))
    settings = MDSettings(ensemble="nve", steps=8, log_every=4, temperature=500.0)
    batched = engine64.md([a.copy() for a in structures], settings, thermalize_momenta=False, **QUIET)
    for k, a in enumerate(structures):
        ref = a.copy()
        ref.calc = calc64
        VelocityVerlet(ref, 1.0 * units.fs).run(8)
        assert np.abs(batched["final"][k].positions - ref.positions).max() < 1e-8
        assert abs(batched["epot"][-1][k] - ref.get_potential_energy()) < 1e-8
    alone = engine64.md([structures[1].copy()], settings, thermalize_momenta=False, **QUIET)
    assert np.abs(alone["final"][0].positions - batched["final"][1].positions).max() < 1e-10
    assert engine64.n_compilations == 1 and calc64.n_compilations == 1


@pytest.mark.slow  # two relaxations and the jax engine's FIRE compilation: ~1 min CPU
def test_relax_engines_agree(engine64, calc64):
    """A compressed Si8 relaxed by ASE's FIRE + FrechetCellFilter and by the jax engine: the same
    cell and energy."""
    settings = RelaxSettings(fmax=0.01, steps=300)
    ase_out = relax_ase(_si8(seed=2, rattle=0.02, strain=0.98), calc64, settings)
    jax_out = engine64.relax([_si8(seed=2, rattle=0.02, strain=0.98)], settings)[0]
    assert ase_out.converged and jax_out.converged
    assert abs(ase_out.energy_per_atom - jax_out.energy_per_atom) < 1e-6
    np.testing.assert_allclose(ase_out.atoms.cell.array, jax_out.atoms.cell.array, atol=1e-4)
    assert 5.4 < ase_out.atoms.get_volume() ** (1 / 3) < 5.5  # SevenNet-0's Si lattice constant (PBE 5.47)


@pytest.mark.slow  # compiles SevenNet-0's force-loss training step (second derivatives, ~1 min CPU)
def test_finetune_frozen_into_deep_ensemble(tmp_path):
    """``init_from: SevenNet-0`` with frozen groups, two members with fresh readouts: frozen
    weights stay, the others move; the bundle is a SevenNet ensemble the calculator evaluates with
    spreads."""
    frames = [a for a in ase.io.read(FIXTURES / "m3gnet_mp2021_dev.extxyz", ":") if len(a) <= 40 and a.pbc.all()]
    ase.io.write(tmp_path / "train.extxyz", frames)
    cfg = {"data": {"train": str(tmp_path / "train.extxyz"), "valid_fraction": 0.3, "graphs_per_batch": 2},
           "model": {"init_from": "SevenNet-0", "freeze": ["node_embedding", "interaction_0", "radial_basis"]},
           "optim": {"epochs": 1, "learning_rate": 1e-3, "ema_decay": 0.0},
           "run": {"progress": False},
           "ensemble": {"kind": "deep", "size": 2, "reinit": ["readout"]}}
    from jaxmat.train import load_config, train_and_evaluate

    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    train_and_evaluate(load_config(tmp_path / "cfg.json"), tmp_path / "run", log=lambda *a, **k: None)
    ens = jaxmat.load_model(tmp_path / "run" / "best_model")
    base = jaxmat.load_model("SevenNet-0")
    assert ens.family == "SevenNet" and ens.size == 2
    for k in range(2):
        member = ens.member_params(k)
        for group in cfg["model"]["freeze"]:
            for a, b in zip(jax.tree_util.tree_leaves(member[group]), jax.tree_util.tree_leaves(base.params[group])):
                np.testing.assert_array_equal(a, b)
        moved = [np.abs(a - b).max() for a, b in zip(jax.tree_util.tree_leaves(member["interaction_2"]),
                                                   jax.tree_util.tree_leaves(base.params["interaction_2"]))]
        assert max(moved) > 0
    r0, r1 = (jax.tree_util.tree_leaves(ens.member_params(k)["readout"])[0] for k in range(2))
    assert np.abs(r0 - r1).max() > 0  # fresh readouts per member
    atoms = _si8(seed=3)
    atoms.calc = JaxmatCalculator(ens)
    atoms.get_forces()
    assert atoms.calc.results["forces_members"].shape == (2, 8, 3)
    assert np.isfinite(atoms.calc.results["energy_std"])
