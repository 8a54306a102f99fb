"""Smoke test of the main job, ``jaxmat md`` (real model, real ASE MD, a trajectory written)."""

import subprocess
import sys

import ase.io


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
    from conftest import FIXTURES

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
