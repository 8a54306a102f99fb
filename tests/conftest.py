"""Shared fixtures. Every test runs with jax_debug_nans on (as e3nn-jax does), so a NaN anywhere in
a jitted computation (e.g. from padded zero-length edges) fails the test."""

from __future__ import annotations

from pathlib import Path

import ase.io
import jax
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# A one-block M3GNet small enough for training tests to run in seconds on a CPU.
TINY = {"units": 16, "dim_node": 16, "dim_edge": 16, "nblocks": 1, "readout_features": [16, 16, 1]}


def tiny_train_config(path, base, **over):
    """A training config dict for the TINY model on the extxyz file `path`.

    `base` maps sections ("data", "optim", "run", ...) to the test file's defaults; each keyword in
    `over` is a section whose entries replace or extend those defaults."""
    d = {"model": {"hyperparameters": TINY}, **{k: dict(v) for k, v in base.items()}}
    d["data"] = {"train": str(path), **d.get("data", {})}
    for section, values in over.items():
        d[section] = {**d.get(section, {}), **values}
    return d


@pytest.fixture(autouse=True)
def debug_nans():
    old = jax.config.jax_debug_nans
    jax.config.update("jax_debug_nans", True)
    yield
    jax.config.update("jax_debug_nans", old)


@pytest.fixture(scope="session")
def reference_frames():
    """The 12 M3GNet-MP-2021.2.8-PES float64 reference structures (copy of ../shared/reference)."""
    return {a.info["name"]: a for a in ase.io.read(FIXTURES / "m3gnet_mp2021_dev.extxyz", ":")}


@pytest.fixture(scope="session")
def model():
    import jaxmat

    return jaxmat.load_model()


@pytest.fixture(scope="session")
def calc64(model):
    from jaxmat.calculators import JaxmatCalculator

    return JaxmatCalculator(model=model, dtype="float64")


@pytest.fixture(scope="session")
def calc32(model):
    from jaxmat.calculators import JaxmatCalculator

    return JaxmatCalculator(model=model, dtype="float32")


@pytest.fixture(scope="session")
def labelled_file(tmp_path_factory, model):
    """Rattled Si/SiO-free cells and a molecule-free set labelled by the real pretrained model."""
    from jaxmat.calculators import JaxmatCalculator

    calc = JaxmatCalculator(model=model, dtype="float64")
    rng = np.random.default_rng(0)
    frames = []
    for k in range(12):
        a = bulk("Si", "diamond", 5.43 * (1 + 0.02 * rng.normal()), cubic=True)
        a.rattle(0.08, seed=k)
        a.calc = calc
        e, f, s = a.get_potential_energy(), a.get_forces(), a.get_stress()
        a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
        frames.append(a)
    path = tmp_path_factory.mktemp("data") / "si_labelled.extxyz"
    ase.io.write(path, frames)
    return path
