"""Shared fixtures. Every test runs with jax_debug_nans on (as e3nn-jax does), so a NaN anywhere in
a jitted computation (e.g. from padded zero-length edges) fails the test."""

from __future__ import annotations

import os
import tempfile

# One persistent XLA compilation cache for the whole test session, this process and every subprocess
# it starts (JAX reads these variables at import): many tests compile the same computation (the same
# training step of the tiny model, the same calculator bucket) from new jit objects, and a cache hit
# costs milliseconds instead of seconds. Tests only: the library never touches this setting.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxmat-test-xla-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
# Most of the in-process tests' time is XLA compiling small computations it then runs a few times:
# this process compiles them with LLVM's optimizations off (IEEE arithmetic either way: XLA's CPU
# backend does not use fast math), unless the caller chose a level. The subprocesses it starts (the
# README's commands, the command line) run as a user runs them, at XLA's default level: the flag is
# taken out of the environment again once this process's backend has read it (below), and this
# process keeps its cache entries in a folder of their own (JAX's cache keys hash XLA_FLAGS as the
# environment holds it at each compilation, so they cannot tell the two levels apart).
_XLA_FLAGS = os.environ.get("XLA_FLAGS")
_LLVM_O0 = "xla_backend_optimization_level" not in (_XLA_FLAGS or "")
if _LLVM_O0:
    os.environ["XLA_FLAGS"] = f"{_XLA_FLAGS or ''} --xla_backend_optimization_level=0".strip()

import ase.io  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402

import jaxmat  # noqa: E402
from helpers import FIXTURES  # noqa: E402  (the other test helpers live in helpers.py too)

# The test session is an application, like the jaxmat command: keep freed host memory so each
# jitted call does not page-fault its scratch buffer anew (jaxmat._host_memory; forces and stress
# ~1.5-2x faster on the CPU). Before any JAX computation, hence here.
jaxmat.retain_host_memory()
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(os.environ["JAX_COMPILATION_CACHE_DIR"], "llvm-O0" if _LLVM_O0 else ""))
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.devices()  # the CPU backend starts here and reads XLA_FLAGS, once per process
if _LLVM_O0 and _XLA_FLAGS is None:
    del os.environ["XLA_FLAGS"]
elif _LLVM_O0:
    os.environ["XLA_FLAGS"] = _XLA_FLAGS



def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        import shutil

        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


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
