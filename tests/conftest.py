"""Shared fixtures. Every test runs with jax_debug_nans on (as e3nn-jax does), so a NaN anywhere in
a jitted computation (e.g. from padded zero-length edges) fails the test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# One persistent XLA compilation cache for the whole test session, this process and every subprocess
# it starts (JAX reads these variables at import): many tests compile the same computation (the same
# training step of the tiny model, the same calculator bucket) from new jit objects, and a cache hit
# costs milliseconds instead of seconds. Tests only: the library never touches this setting.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxmat-test-xla-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

import ase.io  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402

import jaxmat  # noqa: E402

# The test session is an application, like the jaxmat command: keep freed host memory so each
# jitted call does not page-fault its scratch buffer anew (jaxmat._host_memory; forces and stress
# ~1.5-2x faster on the CPU). Before any JAX computation, hence here.
jaxmat.retain_host_memory()
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))



def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        import shutil

        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


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


def checkpoint_state(workdir) -> dict:
    """The state saved in ``workdir``'s training checkpoint (numpy leaves)."""
    import flax.serialization

    return flax.serialization.msgpack_restore((Path(workdir) / "checkpoint.msgpack").read_bytes())["state"]


def train_killed_and_resumed(tmp_path, cfg: dict, kill_when) -> tuple[dict, dict]:
    """Run ``jaxmat train`` on ``cfg`` once uninterrupted ("full") and once killed with SIGKILL as soon
    as ``kill_when(state)`` holds for its checkpoint (polled; a checkpoint never decodes half-written),
    then resumed with ``--resume`` ("killed"). Returns the final checkpoint states (full, resumed)."""
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "jaxmat.cli", "train", str(tmp_path / "cfg.json")]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    subprocess.run(cmd + ["--workdir", str(tmp_path / "full")], check=True, capture_output=True, env=env, timeout=600)
    proc = subprocess.Popen(cmd + ["--workdir", str(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    ckpt, killed = tmp_path / "killed" / "checkpoint.msgpack", False
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and kill_when(checkpoint_state(tmp_path / "killed")):
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.01)
    proc.wait()
    assert killed, "the run finished before it could be killed"
    subprocess.run(cmd + ["--workdir", str(tmp_path / "killed"), "--resume"], check=True, capture_output=True,
                   env=env, timeout=600)
    return checkpoint_state(tmp_path / "full"), checkpoint_state(tmp_path / "killed")


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
