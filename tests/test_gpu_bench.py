"""scripts/gpu_bench.sh, the accelerator benchmark, at tiny sizes on the CPU (``--smoke``): every section
runs through the same code as on the GPU machine, so the script cannot rot unnoticed."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import jaxmat

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("models", "md", "ensemble", "train")


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "experiments" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(stdout, JSON, JSON path) of ``scripts/gpu_bench.sh --smoke``, run as on the GPU machine."""
    out = tmp_path_factory.mktemp("gpu_bench") / "gpu_bench.json"
    # XLA's backend optimisations off: the same code compiles in about half the time (no timing is checked)
    env = {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()}
    env.pop("OUT", None)
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_bench.sh"), "--smoke", "--json", str(out)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res.stdout, json.loads(out.read_text()), out


@pytest.mark.slow  # runs scripts/gpu_bench.sh --smoke (~1 min): before a GPU session, with -m slow
def test_every_section_measures(smoke):
    _, data, _ = smoke
    assert data["smoke"] and data["environment"]["backend"] == "cpu"
    assert {"jax", "flax", "e3nn-jax", "jraph", "ase", "vesin"} <= set(data["environment"]["versions"])
    for section in SECTIONS:
        assert data[section], section
        for row in data[section]:
            assert "error" not in row and "skipped" not in row, row
            for key, value in row.items():
                if key.endswith(("_ms", "_per_s", "_s")):
                    assert math.isfinite(value) and value > 0, (section, key, row)
    # every embedded model has its row (a model added to jaxmat/pretrained joins the table by itself)
    assert sorted(r["model"] for r in data["models"]) == sorted(jaxmat.list_pretrained())
    assert all(r["recompilations"] == 0 for r in data["md"])  # the timed run reuses the compiled chunk
    assert [r["what"] for r in data["ensemble"]] == ["one member", "2 members, vmap", "2 members, sequential"]
    assert data["train"][0]["structures"] == 2 and data["train"][0]["atoms"] == 16


@pytest.mark.slow  # runs scripts/gpu_bench.sh --smoke (~1 min): before a GPU session, with -m slow
def test_markdown_table(smoke):
    stdout, data, path = smoke
    table = path.with_suffix(".md").read_text()
    assert stdout.startswith(table.rstrip("\n"))
    assert table.startswith("# jaxmat on cpu (cpu, 1 device(s)), float32, smoke sizes")
    for title in ("## Energy + forces + stress per call", "## MD, jax engine", "## Deep ensemble",
                  "## One training step"):
        assert title in table
    for row in data["models"]:
        assert f"| {row['model']} | 8 | {row['what']} |" in table


@pytest.mark.slow  # runs scripts/gpu_bench.sh --smoke (~1 min): before a GPU session, with -m slow
def test_benchmarked_energy_is_the_models_prediction(smoke, model):
    """The benchmark times the computation users get: its default-model energy equals ``Model.predict``'s
    (one model: every potential's row runs the same code)."""
    _, data, _ = smoke
    atoms = bench_module().si_cell(1)
    row = next(r for r in data["models"] if r["model"] == jaxmat.DEFAULT_MODEL)
    assert model.name == jaxmat.DEFAULT_MODEL
    expected = float(model.predict([atoms])[0])  # total energy, eV
    assert row["energy_per_atom"] * len(atoms) == pytest.approx(expected, rel=1e-6, abs=1e-4)
    for r in data["models"]:
        if r["what"] == "E+F+S":
            assert r["max_abs_force_sum"] < 1e-3  # the forces of a periodic cell sum to zero


def test_budget_and_failures_are_listed(tmp_path):
    bench = bench_module()
    assert bench.main(["--smoke", "--budget-s", "0", "--json", str(tmp_path / "a.json")]) == 0
    data = json.loads((tmp_path / "a.json").read_text())
    assert all(row["skipped"] == "time budget" for s in SECTIONS for row in data[s])
    assert "skipped (time budget)" in (tmp_path / "a.md").read_text()
    status = bench.main(["--smoke", "--sections", "models", "--models", "NoSuchModel", "--json",
                         str(tmp_path / "b.json")])
    rows = json.loads((tmp_path / "b.json").read_text())["models"]
    assert status == 1 and "NoSuchModel" in rows[0]["error"]
    assert "FAILED: BundleError" in (tmp_path / "b.md").read_text()
    with pytest.raises(SystemExit):
        bench.main(["--sections", "md,nonsense"])
