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
