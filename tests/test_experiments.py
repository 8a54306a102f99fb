"""Smoke tests of the experiment drivers: each runs end to end for a few steps on tiny real data."""

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import pytest

from jaxmat.data import read_frames

from helpers import FIXTURES, import_experiment

ROOT = Path(__file__).resolve().parents[1]


def _protocol_files(tmp_path, scratch=False):
    """X_train/X_test.extxyz with mlearn-style "group"s: the fixture's eight labelled cells of at most 40
    atoms; ``scratch``: one element (from-scratch training refuses validation elements it never saw),
    eight rattled 8-atom Si cells labelled by the pretrained model."""
    if scratch:
        from ase.build import bulk
        from ase.calculators.singlepoint import SinglePointCalculator

        from jaxmat.calculators import JaxmatCalculator

        calc, frames = JaxmatCalculator(), []
        for k in range(8):
            a = bulk("Si", "diamond", 5.43, cubic=True)
            a.rattle(0.05, seed=k)
            a.calc = calc
            e, f, s = a.get_potential_energy(), a.get_forces(), a.get_stress()
            a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
            frames.append(a)
    else:
        frames = [a for a in ase.io.read(FIXTURES / "m3gnet_mp2021_dev.extxyz", ":") if len(a) <= 40]
    for k, a in enumerate(frames):
        a.info["group"] = ("AIMD-NVT", "Surface")[k % 2]
    ase.io.write(tmp_path / "X_train.extxyz", frames)
    ase.io.write(tmp_path / "X_test.extxyz", frames[:3])


def test_every_ablation_variant_is_a_valid_config():
    from jaxmat.models import expected_param_shapes
    from jaxmat.train import config_from_dict, default_hyperparameters

    plan = import_experiment("ablations/run.py").plan

    spec = json.loads((ROOT / "experiments" / "ablations" / "ablations.json").read_text())
    runs = plan(spec, ROOT / "experiments" / "ablations", Path("/nonexistent"))
    assert {"Si", "Mo"} == set(spec["epochs"]) and spec["seeds"] == [0, 1, 2]
    assert len(runs) == len(spec["variants"]) * 2 * 3 == len({r.key for r in runs})
    checked = set()
    for r in runs:
        assert "test" not in r.config["data"] and r.test.endswith("_test.extxyz")
        cfg = config_from_dict(r.config)
        model = json.dumps([cfg.model.family, cfg.model.hyperparameters], sort_keys=True)
        if model not in checked:  # the seeds and elements of a variant share its model
            checked.add(model)
            hyper = {**default_hyperparameters(cfg.model.family), "element_types": ["Si"], **cfg.model.hyperparameters}
            assert expected_param_shapes(cfg.model.family, hyper), r.key


def test_ablation_budget_note():
    """The budget paragraph is measured from the curves: a flat end reads as flattened, a falling one as not,
    the steepest variant is named, and runs shorter than the window are left out rather than read as NaN."""
    ablations = import_experiment("ablations/run.py")
    TAIL, budget_note, tail_gain = ablations.TAIL, ablations.budget_note, ablations.tail_gain

    spec = json.loads((ROOT / "experiments" / "ablations" / "ablations.json").read_text())

    def run(curve, ended="epochs"):
        return {"curve": {"val_f_mae": curve}, "ended": ended}

    flat, falling = [1.0] * 10, [1.0 - 0.05 * k for k in range(10)]
    assert tail_gain(run(flat)) == 0.0
    assert tail_gain(run(falling)) == pytest.approx(100 * (falling[-TAIL - 1] - falling[-1]) / falling[-TAIL - 1])
    note = budget_note(spec, {"a/Si/0": run(flat), "a/Si/1": run(flat), "b/Si/0": run(falling, "early stopping")})
    assert "have flattened" in note and "1 of 3 runs stopped early" in note and "most (mean over runs): b (" in note
    assert "still falling, so" in budget_note(spec, {"b/Si/0": run(falling)})
    assert "not measured" in budget_note(spec, {"a/Si/0": run([1.0, 0.9])})


@pytest.mark.slow  # ~3.3 min on 2 cores (two pinned training subprocesses): outside the default suite (-m slow)
def test_mlearn_protocol_driver(tmp_path):
    """The mlearn driver end to end on a tiny protocol (1 epoch, 2 seeds, 2 lanes): every run is trained
    on one core, evaluated on its test file once, recorded and tabulated; a second call trains nothing
    and keeps the record; a workdir made for another config is refused."""
    _protocol_files(tmp_path)
    spec = json.loads((ROOT / "experiments" / "mlearn" / "protocol.json").read_text())
    assert set(spec["setups"]["finetune"]["epochs"]) == {"Ni", "Cu", "Li", "Mo", "Si"}
    assert {"Si", "Mo"} <= set(spec["setups"]["scratch"]["epochs"]) and spec["seeds"] == [0, 1, 2]
    spec.update(data="{element}_{split}.extxyz", seeds=[0, 1])
    spec["base"]["data"]["valid_fraction"] = 0.25
    spec["setups"] = {"finetune": {"epochs": {"X": 1}, "config": spec["setups"]["finetune"]["config"]}}
    (tmp_path / "protocol.json").write_text(json.dumps(spec))
    cmd = [sys.executable, str(ROOT / "experiments" / "mlearn" / "run.py"), "--protocol", str(tmp_path / "protocol.json"),
           "--root", str(tmp_path)]
    # a wall-time cap that stops every run within its first epoch: nothing is evaluated or recorded (exit 3)
    out = subprocess.run(cmd + ["--minutes", "0.0001"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 3 and "unfinished runs" in out.stdout, (out.stdout[-2000:], out.stderr[-3000:])
    assert not any((tmp_path / "runs" / f"finetune_X_{s}" / "test.json").exists() for s in (0, 1))
    assert set(json.loads((tmp_path / "runs.json").read_text())) == {"zeroshot/X/-"}
    assert "| X | jaxmat M3GNet fine-tuned | not run yet |" in (tmp_path / "results.md").read_text()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # resumes them to the end
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((tmp_path / "runs.json").read_text())
    assert set(record) == {"finetune/X/0", "finetune/X/1", "zeroshot/X/-"}
    for seed in (0, 1):
        r = record[f"finetune/X/{seed}"]
        assert r["ended"] == "epochs" and r["epochs"] == r["best_epoch"] == 1 and r["params"] > 100_000
        assert set(r["test"]["by_group"]) == {"AIMD-NVT", "Surface"} and r["test"]["f_mae"] > 0
        # the test metrics are those of the kept model on the test file (the frames it was evaluated on)
        from jaxmat.models import load_model
        from jaxmat.train import error_metrics, predict_frames

        model = load_model(tmp_path / "runs" / f"finetune_X_{seed}" / "best_model")
        again = error_metrics(predict_frames(model, model.params, read_frames(tmp_path / "X_test.extxyz")))
        assert again["f_mae"] == pytest.approx(r["test"]["f_mae"], rel=1e-5)
        trained = json.loads((tmp_path / "runs" / f"finetune_X_{seed}" / "protocol.json").read_text())["config"]
        assert "test" not in trained["data"] and trained["run"]["seed"] == seed
    table = (tmp_path / "results.md").read_text()
    assert "| X | jaxmat M3GNet fine-tuned |" in table and "| 2 | 1 (1), 1 (1) |" in table
    assert (tmp_path / "parity" / "finetune_X.png").is_file() and (tmp_path / "curves.png").is_file()

    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "2 of 2 runs finished; 0 to go" in out.stdout, out.stderr[-3000:]
    assert json.loads((tmp_path / "runs.json").read_text()) == record

    # killed after the test evaluation, before the summary: the next call summarises the number it has
    # (a marker here) and never evaluates the test split again
    wd = tmp_path / "runs" / "finetune_X_0"
    (wd / "summary.json").unlink()
    (tmp_path / "runs.json").write_text(json.dumps({k: v for k, v in record.items() if k != "finetune/X/0"}))
    test = json.loads((wd / "test.json").read_text())
    (wd / "test.json").write_text(json.dumps({**test, "f_mae": 123.0}))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "runs.json").read_text())["finetune/X/0"]["test"]["f_mae"] == 123.0

    protocol = import_experiment("_protocol.py")
    Run, prepare = protocol.Run, protocol.prepare

    with pytest.raises(ValueError, match="the protocol changed"):
        prepare(Run("finetune/X/0", {"data": {"train": "other.extxyz"}}, str(tmp_path / "X_test.extxyz"), wd))
    with pytest.raises(ValueError, match="must not name the test file"):
        prepare(Run("k", {"data": {"train": "a", "test": "b"}}, "b", tmp_path / "new"))


def test_protocol_minutes_survive_a_kill(tmp_path):
    """A call's minutes are on disk while it runs (rewritten every few seconds), so a call killed
    before its end still counts toward the run's cap; earlier calls' entries are kept."""
    protocol = import_experiment("_protocol.py")
    (tmp_path / "minutes.json").write_text("[2.5]\n")
    t = time.perf_counter()
    with protocol._metered(tmp_path, every=0.05):
        while time.perf_counter() - t < 0.3:  # busy, so CPU time accrues too
            pass
        mid = json.loads((tmp_path / "minutes.json").read_text())
        assert len(mid) == 2 and mid[0] == 2.5 and 0.1 / 60 < mid[1] <= (time.perf_counter() - t) / 60
        assert json.loads((tmp_path / "cpu_minutes.json").read_text())[0] > 0
    end = json.loads((tmp_path / "minutes.json").read_text())
    assert len(end) == 2 and end[1] >= 0.3 / 60 and protocol.spent_minutes(tmp_path) == pytest.approx(sum(end))


@pytest.mark.slow  # minutes on 2 cores: outside the default suite (-m slow)
def test_ablation_driver_smoke(tmp_path):
    _protocol_files(tmp_path, scratch=True)
    spec = json.loads((ROOT / "experiments" / "ablations" / "ablations.json").read_text())
    small = copy.deepcopy(spec)
    small.update(data="{element}_{split}.extxyz", seeds=[0, 1], epochs={"X": 1})
    small["base"]["data"]["valid_fraction"] = 0.25
    small["variants"] = {k: spec["variants"][k] for k in ("no three-body", "equivariant", "shallow ensemble (4 heads)")}
    tiny = {"nblocks": 1, "dim_node": 8, "dim_edge": 8, "units": 8, "readout_features": [8, 1]}
    small["base"]["model"]["hyperparameters"] = tiny  # tiny widths keep the smoke test fast
    (tmp_path / "spec.json").write_text(json.dumps(small))
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "ablations" / "run.py"), str(tmp_path / "spec.json")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    assert "| X | no three-body |" in table and "| X | equivariant |" in table and "± " in table
    assert len(json.loads((tmp_path / "runs.json").read_text())) == 6
    assert (tmp_path / "ablation.png").stat().st_size > 1000 and (tmp_path / "curves.png").is_file()


