"""Smoke tests of the experiment drivers: each runs end to end for a few steps on tiny real data."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import ase.io
import pytest

from jaxmat.data import read_frames

from conftest import FIXTURES, SHARED

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


@pytest.mark.slow  # minutes on 2 cores: outside the default suite (-m slow)
def test_ablation_driver_smoke(tmp_path):
    spec = json.loads((ROOT / "experiments" / "ablations" / "ablations.json").read_text())
    small = copy.deepcopy(spec)
    # validation on the training file: a split of these 12 varied frames leaves elements (Na, Cl) that no
    # training frame has, which training from scratch refuses
    ref = str(FIXTURES / "m3gnet_mp2021_dev.extxyz")
    small["datasets"] = {"ref": {"train": ref, "valid": ref}}
    small["variants"] = {k: spec["variants"][k] for k in ("no_three_body", "equivariant")}
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


@pytest.mark.slow  # minutes on 2 cores: outside the default suite (-m slow)
def test_mlearn_ensemble_driver(tmp_path):
    """Members a (the pretrained default) and b (a with its weights jittered): an ensemble of a with
    itself reproduces a (zero spread); the mean of a and b is no worse than their average error
    (triangle inequality); members with different validation splits are refused; an ensemble with a
    member trained on every frame (d: valid_fraction 0) is scored on test only."""
    import jax
    import numpy as np

    from jaxmat.models import load_model
    from jaxmat.train import error_metrics, predict

    data = str(tmp_path / "small.extxyz")  # the fixture's eight labelled cells of at most 40 atoms
    frames = [a for a in ase.io.read(FIXTURES / "m3gnet_mp2021_dev.extxyz", ":") if len(a) <= 40]
    ase.io.write(data, frames)
    (tmp_path / "configs").mkdir()
    for name, seed, fraction in (("a", 0, 0.25), ("b", 0, 0.25), ("c", 1, 0.25), ("d", 0, 0.0)):
        d = {"data": {"train": data, "test": data, "valid_fraction": fraction}, "run": {"seed": seed}}
        (tmp_path / "configs" / f"{name}.json").write_text(json.dumps(d))
    a = load_model()
    a.save(tmp_path / "runs" / "a" / "best_model")
    rng = np.random.default_rng(0)
    b = a.with_params(jax.tree_util.tree_map(lambda x: x * (1 + 0.05 * rng.standard_normal(np.shape(x))), a.params))
    b.save(tmp_path / "runs" / "b" / "best_model")
    b.save(tmp_path / "runs" / "d" / "best_model")
    spec = {"note": "smoke", "ensembles": {"aa": ["a", "a"], "ab": ["a", "b"], "ad": ["a", "d"]}}
    (tmp_path / "ensembles.json").write_text(json.dumps(spec))
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "mlearn" / "ensemble.py"), "--root", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]]
            for r in (tmp_path / "ensembles.md").read_text().splitlines() if r.startswith("| a")}
    a_test = error_metrics(predict(a, a.params, read_frames(data)))
    assert float(rows["aa"][3]) == pytest.approx(a_test["f_mae"], abs=1e-4) and float(rows["aa"][5]) == 0.0
    assert float(rows["aa"][2]) == pytest.approx(a_test["e_mae"], abs=1e-2)
    members = [float(x) for x in rows["ab"][6].split(",")]
    assert members[0] == pytest.approx(a_test["f_mae"], abs=1e-4) and float(rows["ab"][5]) > 1e-3
    assert float(rows["ab"][3]) <= sum(members) / 2 + 1e-4
    assert rows["ab"][1] != "-" and rows["ad"][1] == "-" and rows["ad"][2:6] == rows["ab"][2:6]

    # --only rescores the named ensembles and keeps the other rows (their members may be gone)
    md = tmp_path / "ensembles.md"
    md.write_text(md.read_text().replace("| aa |", "| aa | kept |", 1))
    for f in (tmp_path / "runs" / "d" / "best_model").iterdir():
        f.unlink()
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "mlearn" / "ensemble.py"), "--root", str(tmp_path),
                          "--only", "ab"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    again = {r.split("|")[1].strip(): r for r in md.read_text().splitlines() if r.startswith("| a")}
    assert again["aa"].startswith("| aa | kept |")
    assert [c.strip() for c in again["ab"].split("|")[2:-1]] == rows["ab"]
    assert [c.strip() for c in again["ad"].split("|")[2:-1]] == rows["ad"]

    sys.path.insert(0, str(ROOT / "experiments" / "mlearn"))
    from ensemble import ensemble_metrics

    with pytest.raises(ValueError, match="different data splits"):
        ensemble_metrics(tmp_path, ["a", "c"], "valid")
    with pytest.raises(ValueError, match="no validation frames"):
        ensemble_metrics(tmp_path, ["a", "d"], "valid")


COMMITTED_MODEL = ROOT / "experiments" / "mlearn" / "runs" / "si_l7_s001_full_tb45_nb4_stage2"


@pytest.mark.skipif(not (SHARED / "data" / "mlearn" / "Si_test.extxyz").is_file(),
                    reason="needs ../shared/data/mlearn (absent)")
@pytest.mark.slow  # minutes on 2 cores: outside the default suite (-m slow)
def test_a_committed_mlearn_model_reproduces_its_committed_test_numbers():
    """The committed best model, run through the ASE calculator on the official test split,
    gives the test MAEs committed beside it (results.json, the trainer's own evaluation)."""
    import numpy as np

    from jaxmat.calculators import JaxmatCalculator

    committed = json.loads((COMMITTED_MODEL / "results.json").read_text())["test"]
    calc = JaxmatCalculator(str(COMMITTED_MODEL / "best_model"))
    e_err, f_err = [], []
    for atoms in ase.io.read(SHARED / "data" / "mlearn" / "Si_test.extxyz", ":"):
        ref_e, ref_f = atoms.get_potential_energy() / len(atoms), atoms.get_forces()
        atoms.calc = calc
        e_err.append(atoms.get_potential_energy() / len(atoms) - ref_e)
        f_err.append(atoms.get_forces() - ref_f)
    assert 1000 * np.abs(e_err).mean() == pytest.approx(committed["e_mae"], abs=0.01)  # meV/atom
    assert np.abs(np.concatenate(f_err)).mean() == pytest.approx(committed["f_mae"], abs=1e-4)  # eV/A
