"""Training and ensembles across devices (jax.sharding) and processes (jax.distributed), on this CPU.

Four devices are forced with XLA_FLAGS=--xla_force_host_platform_device_count=4 in a subprocess
(tests/_multidevice.py), so no other test sees them; the two-process run is two real `jaxmat train`
processes on localhost talking over gloo. float64 throughout: "equal" means round-off.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import checkpoint_state, tiny_train_config

HERE = Path(__file__).parent
FORCE4 = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}


def run_case(case, tmp_path, data):
    env = {**os.environ, **FORCE4}
    out = subprocess.run([sys.executable, str(HERE / "_multidevice.py"), case, str(tmp_path), str(data)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_data_parallel_training_equals_one_device_and_resumes_across_device_counts(tmp_path, labelled_file):
    r = run_case("training", tmp_path, labelled_file)
    assert r["devices"] == 4 and r["steps"] == [20, 20]
    # same global batches, loss of all devices' entries at once: the same 20 steps up to round-off
    assert r["four_vs_one"] < 1e-9 * max(1.0, r["scale"]), r
    assert r["opt_four_vs_one"] < 1e-9 * max(1.0, r["scale"]), r
    # a checkpoint written on 4 devices resumes on 1, and the other way round
    assert r["resume_4_1"] < 1e-9 * max(1.0, r["scale"]), r
    assert r["resume_1_4"] < 1e-9 * max(1.0, r["scale"]), r


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_sharded_ensemble_prediction_equals_one_device(tmp_path, labelled_file):
    r = run_case("ensemble_prediction", tmp_path, labelled_file)
    assert r["member_spread"] > 1e-3  # the members differ, so a mixed-up member axis would show
    assert r["prediction_shards"] == 4  # the members' forces live on the four devices
    assert r["sharded_vs_plain"] < 1e-10, r
    assert r["calculator_4_vs_1"] < 1e-10, r  # JaxmatCalculator(ensemble_devices=4)


@pytest.mark.slow
def test_deep_ensemble_members_on_four_devices_train_as_on_one(tmp_path, labelled_file):
    r = run_case("deep_training", tmp_path, labelled_file)
    assert r["deep_four_vs_one"] < 1e-9, r


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_sharded_batched_md_equals_one_device(tmp_path):
    r = run_case("md", tmp_path, "-")
    assert r["steps"] == [0, 10, 20, 30, 40, 50, 60]
    assert r["compilations_4"] == 1  # one shard_map'ped chunk for every group and rebuild
    assert r["rebuilds_4"] > 0 and r["rebuilds_1"] > 0  # lists went stale and were rebuilt on both
    assert r["temperature_spread"] > 50  # the replicas really differ (300/600/900 K)
    assert r["positions"] < 1e-8, r  # the same trajectories, replica by replica
    assert r["epot"] < 1e-8, r


@pytest.mark.slow  # compiles SevenNet-0's MD step for 1 and 4 devices (~1 min CPU)
def test_sharded_sevennet_md_equals_one_device(tmp_path):
    """The same replicas with SevenNet-0 (no triplets, e3nn-style irreps) on 4 devices and on 1."""
    r = run_case("md", tmp_path, "SevenNet-0")
    assert r["steps"] == [0, 10, 20, 30, 40, 50, 60] and r["compilations_4"] == 1
    assert r["temperature_spread"] > 50
    assert r["positions"] < 1e-8, r
    assert r["epot"] < 1e-8, r


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_two_processes_train_as_one(tmp_path, labelled_file):
    """Two `jaxmat train` processes (jax.distributed on localhost, one CPU device each, gloo) end
    with the parameters of the one-process run; only process 0 writes."""
    cfg = tiny_train_config(labelled_file, {
        "data": {"valid_fraction": 0.25, "graphs_per_batch": 4},
        "optim": {"epochs": 2, "learning_rate": 5e-3, "warmup_epochs": 0.5},
        "run": {"progress": False, "checkpoint_every_steps": 2, "dtype": "float64", "max_steps": 5}})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "jaxmat.cli", "train", str(tmp_path / "cfg.json"), "--workdir"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JAXMAT_", "SLURM_", "XLA_FLAGS"))}
    base["JAX_PLATFORMS"] = "cpu"
    subprocess.run(cmd + [str(tmp_path / "single")], check=True, capture_output=True, env=base, timeout=600)
    port = free_port()
    procs = [subprocess.Popen(cmd + [str(tmp_path / f"proc{i}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**base, "JAXMAT_COORDINATOR": f"127.0.0.1:{port}",
                                              "JAXMAT_NUM_PROCESSES": "2", "JAXMAT_PROCESS_ID": str(i)})
             for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, se[-3000:]
    assert "2 processes, 2 devices" in outs[0][0]
    assert (tmp_path / "proc0" / "checkpoint.msgpack").is_file()
    assert not (tmp_path / "proc1" / "checkpoint.msgpack").exists()  # process 1 computed, wrote nothing
    assert not (tmp_path / "proc1" / "metrics.csv").exists()
    one, two = checkpoint_state(tmp_path / "single"), checkpoint_state(tmp_path / "proc0")
    assert int(one["step"]) == int(two["step"]) == 5
    import jax
    import numpy as np

    for a, b in zip(jax.tree_util.tree_leaves(one["params"]), jax.tree_util.tree_leaves(two["params"])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-9, atol=1e-12)


def test_bad_distributed_environment_is_named(tmp_path, monkeypatch):
    from jaxmat.distributed import initialize_from_env

    monkeypatch.setenv("JAXMAT_COORDINATOR", "127.0.0.1:1")
    monkeypatch.delenv("JAXMAT_NUM_PROCESSES", raising=False)
    monkeypatch.delenv("JAXMAT_PROCESS_ID", raising=False)
    with pytest.raises(ValueError, match="JAXMAT_NUM_PROCESSES"):
        initialize_from_env()
    monkeypatch.setenv("JAXMAT_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAXMAT_PROCESS_ID", "2")
    with pytest.raises(ValueError, match="outside 0..1"):
        initialize_from_env()
