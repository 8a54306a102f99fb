"""Smoke tests of the experiment drivers: each runs end to end for a few steps on tiny real data."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[1]


def test_every_ablation_variant_is_a_valid_config():
    from jaxmat.models._model import expected_param_shapes
    from jaxmat.train import config_from_dict, default_hyperparameters

    sys.path.insert(0, str(ROOT / "experiments" / "ablations"))
    from run import merge

    spec = json.loads((ROOT / "experiments" / "ablations" / "ablations.json").read_text())
    assert {"Si", "Mo"} <= set(spec["datasets"])
    for name, over in spec["variants"].items():
        cfg = config_from_dict(merge(merge(spec["base"], over), {"data": {"train": "x.extxyz"}}))
        hyper = {**default_hyperparameters(cfg.model.family), "element_types": ["Si"], **cfg.model.hyperparameters}
        assert expected_param_shapes(cfg.model.family, hyper), name


def test_ablation_driver_smoke(tmp_path):
    spec = json.loads((ROOT / "experiments" / "ablations" / "ablations.json").read_text())
    small = copy.deepcopy(spec)
    small["datasets"] = {"ref": {"train": str(FIXTURES / "m3gnet_mp2021_dev.extxyz")}}
    small["variants"] = {k: spec["variants"][k] for k in ("no_three_body", "equivariant")}
    small["base"]["data"]["valid_fraction"] = 0.25
    for v in small["variants"].values():  # tiny widths keep the smoke test fast
        v.setdefault("model", {}).setdefault("hyperparameters", {}).update(nblocks=1, dim_node=8, dim_edge=8, units=8,
                                                                          readout_features=[8, 1])
    (tmp_path / "spec.json").write_text(json.dumps(small))
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "ablations" / "run.py"), str(tmp_path / "spec.json"),
                          "--epochs", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    assert "| ref | no_three_body |" in table and "| ref | equivariant |" in table
    assert (tmp_path / "ablation.png").stat().st_size > 1000
