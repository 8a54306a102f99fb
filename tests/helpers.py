"""Helpers the test modules import (``from helpers import ...``): paths, the tiny training model and
the kill-and-resume runner. Fixtures stay in conftest.py; this module imports nothing heavy, so the
subprocess scripts (``_multidevice.py``) use it too."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def import_experiment(relpath):
    """Import the experiment script ``experiments/<relpath>`` (e.g. "mlearn/search.py") as a module.

    Several experiment folders have a ``run.py`` and the scripts import their siblings by bare name, so
    the sibling modules cached by an earlier import (another folder's ``run``) are dropped first and the
    script's own folder goes to the front of sys.path."""
    path = EXPERIMENTS / relpath
    for sibling in path.parent.glob("*.py"):
        sys.modules.pop(sibling.stem, None)
    for folder in (EXPERIMENTS, path.parent):
        if str(folder) in sys.path:
            sys.path.remove(str(folder))
    sys.path[:0] = [str(path.parent), str(EXPERIMENTS)]
    return importlib.import_module(path.stem)

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
