"""Smoke test of the main job, ``jaxmat md`` (real model, real ASE MD, a trajectory written)."""

import subprocess
import sys

import ase.io
import pytest


def test_md_cli(tmp_path):
    traj = tmp_path / "md.traj"
    cmd = [sys.executable, "-m", "jaxmat.cli", "md", "Si", "--steps", "20", "--log-every", "10",
           "--trajectory", str(traj)]
    env = {"JAXMAT_CACHE_DIR": str(tmp_path / "xla")}
    import os

    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "step     20" in out.stdout and "1 compilation(s)" in out.stdout
    frames = ase.io.read(traj, ":")
    assert len(frames) == 3 and len(frames[0]) == 64


def test_predict_cli():
    from helpers import FIXTURES

    out = subprocess.run([sys.executable, "-m", "jaxmat.cli", "predict", "MEGNet-MP-2018.6.1-Eform",
                          str(FIXTURES / "megnet_eform_dev.extxyz"), "--dtype", "float64"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("# model MEGNet-MP-2018.6.1-Eform") and len(lines) == 12
    assert lines[-1].split("\t")[-1] == "-2.272227"


def test_help_and_list_do_not_import_jax():
    """``jaxmat --help``, ``jaxmat md --help`` and ``jaxmat list`` start without JAX or Flax (they took ~3 s
    of imports before doing anything), and ``import jaxmat`` alone is light; ``jaxmat.load_model`` still works."""
    probe = ("import sys, contextlib, io\n"
             "from jaxmat.cli import main\n"
             "out = io.StringIO()\n"
             "with contextlib.redirect_stdout(out):\n"
             "    for argv in (['--help'], ['md', '--help'], ['list']):\n"
             "        try:\n"
             "            main(argv)\n"
             "        except SystemExit:\n"
             "            pass\n"
             "heavy = sorted(m for m in ('jax', 'jaxlib', 'flax', 'optax', 'e3nn_jax') if m in sys.modules)\n"
             "print('HEAVY', heavy)\n"
             "print('LISTED', 'M3GNet-MP-2021.2.8-PES' in out.getvalue(), 'usage: jaxmat md' in out.getvalue())\n"
             "import jaxmat\n"
             "print('LAZY', 'flax' in sys.modules, jaxmat.load_model is not None, 'flax' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout
    assert "LISTED True True" in out.stdout, out.stdout
    assert "LAZY False True True" in out.stdout, out.stdout


# ------------------------------------------------------------------------------------------ jaxmat train
from helpers import TINY, tiny_train_config  # noqa: E402

_TRAIN_BASE = {"data": {"valid_fraction": 0.25, "graphs_per_batch": 2},
               "optim": {"epochs": 5, "learning_rate": 5e-3, "warmup_epochs": 0.5},
               "run": {"progress": False, "checkpoint_every_steps": 1}}
_NO_REFIT = {"hyperparameters": TINY, "refit_element_refs": False}  # one compilation less


def _strict_json(path):
    """json.loads that refuses NaN/Infinity (as strict JSON readers do)."""
    import json

    def refuse(name):
        raise ValueError(f"{path}: bare {name} is not JSON")

    return json.loads(open(path).read(), parse_constant=refuse)


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_train_cli_epochs_override_summary_and_resume_position(tmp_path, labelled_file, capsys):
    """--epochs shortens a run; the run ends with a short summary (best epoch, errors with units, where
    the model is), results.json is strict JSON, and a resume says where it continues, epochs counted
    from 1 as in the log."""
    import json

    from jaxmat.cli import main
    from jaxmat.train._report import write_json

    (tmp_path / "cfg.json").write_text(json.dumps(tiny_train_config(labelled_file, _TRAIN_BASE, model=_NO_REFIT)))
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "cfg.json"), "--workdir", str(run), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "epoch    1" in out and "epoch    2" not in out, out
    assert max(len(line) for line in out.splitlines()) < 300, out  # no results.json dumped on one line
    assert "training ended after epoch 1 (optim.epochs reached); best model from epoch 1" in out
    assert "  valid (3 structures): energy MAE" in out and "meV/atom" in out and "eV/A" in out and "GPa" in out
    assert f"best model: {run / 'best_model'}" in out
    results = _strict_json(run / "results.json")
    assert results["best_epoch"] == 1 and results["ended"] == "epochs" and results["valid"]["f_mae"] > 0
    # a resume names where it continues as the log counts epochs (from 1): here nothing is left to train
    assert main(["train", str(tmp_path / "cfg.json"), "--workdir", str(run), "--epochs", "1", "--resume"]) == 0
    assert "resumed from step 5: the end of epoch 1\n" in capsys.readouterr().out
    # what is not a number is written as null, never as a bare NaN
    write_json(tmp_path / "nan.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}})
    assert _strict_json(tmp_path / "nan.json") == {"a": None, "b": [1.0, None], "c": {"d": 2}}
    # bad overrides are refused like bad config values; --describe and --help list them
    assert main(["train", str(tmp_path / "cfg.json"), "--workdir", str(tmp_path / "x"), "--max-minutes", "-1"]) == 2
    assert "--max-minutes -1.0: config: run.max_wall_minutes = -1.0 (float): expected > 0" in capsys.readouterr().err
    assert main(["train", "--describe"]) == 0
    described = capsys.readouterr().out
    assert "--epochs N" in described and "--max-minutes M" in described


@pytest.mark.slow  # about a minute on 2 cores (a subprocess compiles a training step): outside the 15-min default
# suite; test_interrupt.py's in-process Ctrl-C test (checkpoint of the next step, KeyboardInterrupt) stays in it
def test_train_cli_ctrl_c_keeps_the_checkpoint_and_prints_the_resume_command(tmp_path, labelled_file):
    """SIGINT to a real `jaxmat train` after its first checkpoint: no traceback, exit 130, the message
    names the checkpoint (whole on disk) and its step, and the exact command that resumes it."""
    import json
    import os
    import re
    import shlex
    import signal
    import time

    import flax.serialization

    # a run that cannot end by itself within the test (no early stopping, 10^5 epochs): on a loaded machine a
    # 200-epoch run could finish between the first checkpoint and the signal, which then hit the exit
    cfg = tiny_train_config(labelled_file, _TRAIN_BASE, optim={"epochs": 100_000, "early_stopping_patience": 0},
                            model=_NO_REFIT)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "jaxmat.cli", "train", str(tmp_path / "cfg.json"), "--workdir",
                             str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    deadline = time.time() + 240
    while not (run / "checkpoint.msgpack").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    try:
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:  # never leave the endless run behind
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, (out[-2000:], err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    said = re.search(r"The last checkpoint is kept: (\S+) \(step (\d+): ", err)
    assert said and said.group(1) == str(run / "checkpoint.msgpack"), err
    state = flax.serialization.msgpack_restore((run / "checkpoint.msgpack").read_bytes())["state"]  # whole
    assert int(state["step"]) == int(said.group(2)) >= 1
    assert not list(run.glob(".checkpoint.msgpack.*.tmp"))
    words = shlex.split(err.split("Resume with:")[1].strip().splitlines()[0])
    assert words == ["jaxmat", "train", str(tmp_path / "cfg.json"), "--workdir", str(run), "--resume"]
    epoch, batch = int(state["epoch"]), int(state["batch_in_epoch"])  # counted from 1, as the log counts
    assert f"step {int(state['step'])}: " + (f"epoch {epoch + 1}, after its batch {batch}" if batch else
                                             f"the end of epoch {epoch}") in err, err
    # (that this command continues the run exactly is test_sigkill_mid_epoch_then_resume_equals_uninterrupted's job)
