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
    assert {"Si", "Mo"} <= set(spec["setups"]["sevennet"]["epochs"]) and spec["seeds"] == [0, 1, 2]
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
    # --report redraws the results from the record alone, training nothing
    (tmp_path / "results.md").unlink()
    out = subprocess.run(cmd + ["--report"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "runs finished" not in out.stdout, out.stderr[-3000:]
    assert (tmp_path / "results.md").read_text() == table and json.loads((tmp_path / "runs.json").read_text()) == record

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




def test_record_fingerprints_match_the_committed_protocols(tmp_path):
    """Every committed run record was made under its committed spec (so editing a protocol without moving
    its record aside fails here, and the driver would refuse it); a fingerprint ignores where the data
    lies; a record entry made under another spec, or without a fingerprint, is refused by name."""
    protocol = import_experiment("_protocol.py")
    mlearn, ablations = import_experiment("mlearn/run.py"), import_experiment("ablations/run.py")
    Run, check_record, spec_sha256 = protocol.Run, protocol.check_record, protocol.spec_sha256

    spec = json.loads((ROOT / "experiments" / "mlearn" / "protocol.json").read_text())
    spec["data"] = str((ROOT / "experiments" / "mlearn" / spec["data"]).resolve())
    first, second = mlearn.plan(spec, ROOT / "experiments" / "mlearn")
    aspec = json.loads((ROOT / "experiments" / "ablations" / "ablations.json").read_text())
    for runs, record in ((first + second, ROOT / "experiments" / "mlearn" / "runs.json"),
                         (ablations.plan(aspec, ROOT / "experiments" / "ablations", ROOT / "experiments" / "ablations"),
                          ROOT / "experiments" / "ablations" / "runs.json")):
        done = json.loads(record.read_text()) if record.is_file() else {}  # mlearn v2: none before its first run
        check_record(runs, done, record)
        assert sum(r.key in done for r in runs) >= (21 if "ablations" in str(record) else 0)
    mlearn_record = ROOT / "experiments" / "mlearn" / "runs.json"
    for k, v in (json.loads(mlearn_record.read_text()) if mlearn_record.is_file() else {}).items():
        if k.startswith("zeroshot/"):
            assert v["source"] == {"model": mlearn.ZERO_SHOT, "test_file": f"mlearn/{k.split('/')[1]}_test.extxyz"}

    run = first[0]._replace(workdir=tmp_path / "elsewhere")  # not runs/, where the run may be training now
    moved = run._replace(config=protocol.merge(run.config, {"data": {"train": "/elsewhere" + run.config["data"]["train"]}}))
    assert spec_sha256(moved) == spec_sha256(run)  # a clone in another folder matches its record
    other = run._replace(config=protocol.merge(run.config, {"optim": {"learning_rate": 1.0}}))
    assert spec_sha256(other) != spec_sha256(run) != spec_sha256(run._replace(cap_minutes=45.0))
    with pytest.raises(ValueError, match="another config, test file or cap"):
        check_record([other], {run.key: {"spec_sha256": spec_sha256(run)}}, tmp_path / "runs.json")
    with pytest.raises(ValueError, match="without its spec's fingerprint"):
        check_record([run], {run.key: {}}, tmp_path / "runs.json")
    check_record([run], {run.key: {}}, tmp_path / "runs.json", accept_unstamped=True)
    # an entry from before fingerprints is checked against its workdir's protocol.json where that is here
    here = run._replace(workdir=tmp_path / "wd")
    protocol.prepare(here)
    check_record([here], {run.key: {}}, tmp_path / "runs.json")
    with pytest.raises(ValueError, match="was trained in .* with another config"):
        check_record([here._replace(cap_minutes=45.0)], {run.key: {}}, tmp_path / "runs.json", accept_unstamped=True)

    # the drivers refuse before preparing or training anything: a record entry under another spec ...
    record = tmp_path / "runs.json"
    record.write_text(json.dumps({run.key: {"key": run.key, "spec_sha256": spec_sha256(run)}}))
    fresh = other._replace(workdir=tmp_path / "never")
    with pytest.raises(ValueError, match="another config"):
        protocol.run_all([fresh], record, lanes=1)
    # ... or a stage two whose stage one is recorded but which itself was recorded under another spec
    stages = import_experiment("_stages.py")
    one, two = stages.staged(fresh, {"fraction": 0.2, "over": {"loss": {"energy_weight": 100.0}}})
    record.write_text(json.dumps({one.key: {"key": one.key, "spec_sha256": spec_sha256(one)},
                                  two.key: {"key": two.key, "spec_sha256": spec_sha256(one)}}))
    with pytest.raises(ValueError, match="another config"):
        stages.run_staged([one], [two], record, lanes=1)
    assert not (tmp_path / "never").exists() and not (tmp_path / "never_stage1").exists()


def test_stage_two_follows_its_own_stage_one(tmp_path):
    """run_staged trains each stage two right after its own stage one (a chain on one core), so that a
    session's end leaves no recorded stage one waiting; a stage one recorded on another machine (its
    kept model is not here) is trained again, its stale entry dropped, unless its stage two has ended
    here; a failed link stops its chain; a recorded stage two without its stage one is refused."""
    protocol, stages = import_experiment("_protocol.py"), import_experiment("_stages.py")
    run = protocol.Run("s/X/0", {"data": {"train": str(tmp_path / "absent.extxyz")}, "optim": {"epochs": 10}},
                       str(tmp_path / "absent_test.extxyz"), tmp_path / "runs" / "s_X_0")
    one, two = stages.staged(run, {"fraction": 0.2, "over": {"loss": {"energy_weight": 100.0}}})
    other = protocol.Run("t/X/0", {"data": {"train": str(tmp_path / "absent.extxyz")}}, None, tmp_path / "runs" / "t_X_0")
    record = tmp_path / "runs.json"
    entry = lambda r: {r.key: {"key": r.key, "spec_sha256": protocol.spec_sha256(r)}}  # noqa: E731
    record.write_text(json.dumps(entry(one)))
    log = []
    done, failed, unfinished = stages.run_staged([one, other], [two], record, lanes=1, log=log.append)
    assert "not on this machine; training it again" in log[0] and one.key not in json.loads(record.read_text())
    assert [f.split(" ")[0] for f in failed] == [one.key, other.key]  # the data file is absent; in plan order
    assert unfinished == [f"{two.key} (waits for {one.key})"] and not (two.workdir / "train.log").exists()
    assert (one.workdir / "train.log").is_file()

    # its model here: stage one stays recorded and its stage two is what trains (and fails: no data)
    record.write_text(json.dumps(entry(one)))
    (one.workdir / "best_model").mkdir(parents=True)
    log = []
    _, failed, unfinished = stages.run_staged([one], [two], record, lanes=1, log=log.append)
    assert one.key in json.loads(record.read_text()) and not any("again" in m for m in log)
    assert [f.split(" ")[0] for f in failed] == [two.key] and (two.workdir / "train.log").is_file() and not unfinished
    # a stage two that has ended here (trained from the old stage one) never has its stage one retrained
    (one.workdir / "best_model").rmdir()
    (two.workdir / "summary.json").write_text("{}")
    _, failed, _ = stages.run_staged([one], [two], record, lanes=1, log=log.append)
    assert one.key in json.loads(record.read_text()) and not any("again" in m for m in log)
    record.write_text(json.dumps(entry(two)))
    with pytest.raises(ValueError, match="recorded but not its stage one"):
        stages.run_staged([one], [two], record, lanes=1)


def test_mlearn_plan_two_stages_and_the_mtp_bar():
    """A setup with a stage two: stage one untested with 1 - fraction of the cap and epochs, stage two
    tested from stage one's kept model; the MTP bar reads means over seeds, energies <= MTP's and forces
    < MTP's + 0.005, and says a setup meets it only on all five elements."""
    mlearn = import_experiment("mlearn/run.py")
    spec = {"data": "/d/{element}_{split}.extxyz", "seeds": [0, 1], "base": {"data": {"valid_fraction": 0.1}},
            "setups": {"recipe": {"label": "recipe", "epochs": {"Si": 100}, "cap_minutes": 40.0,
                                  "config": {"model": {"init_from": "M3GNet-MP-2021.2.8-PES"}},
                                  "stage_two": {"fraction": 0.25, "over": {"loss": {"energy_weight": 100.0}}}}}}
    first, second = mlearn.plan(spec, Path("/root"))
    assert mlearn.stage_one(spec, {"recipe/Si/0/stage1": {"minutes": 3}}, "recipe", "recipe/Si/0") == {"minutes": 3}
    with pytest.raises(ValueError, match="not its stage one"):
        mlearn.stage_one(spec, {}, "recipe", "recipe/Si/0")
    assert [r.key for r in first] == ["recipe/Si/0/stage1", "recipe/Si/1/stage1"] and [r.key for r in second] == [
        "recipe/Si/0", "recipe/Si/1"]
    one, two = first[0], second[0]
    assert one.test is None and two.test == "/d/Si_test.extxyz" and "test" not in two.config["data"]
    assert (one.cap_minutes, two.cap_minutes) == (30.0, 10.0)
    assert (one.config["optim"]["epochs"], two.config["optim"]["epochs"]) == (75, 25)
    assert two.config["model"]["init_from"] == str(one.workdir / "best_model") and two.config["loss"]["energy_weight"] == 100
    assert "energy_weight" not in one.config.get("loss", {})

    mtp = mlearn.MTP
    spec["setups"]["recipe"]["epochs"] = dict.fromkeys(mtp, 10)
    record = {}
    for el, (e, f) in mtp.items():
        for s, (de, df) in enumerate(((-0.1, 0.004), (0.09, 0.0059))):  # means: E just under MTP's, F under MTP's + 0.005
            record[f"recipe/{el}/{s}"] = {"test": {"e_mae": e + de, "f_mae": f + df}}
    lines = mlearn.mtp_bar(spec, record)
    assert sum("| yes |" in x for x in lines) == 5 and "met on 5 of 5 elements (all" in lines[-1]
    record["recipe/Si/1"]["test"]["f_mae"] += 0.0013  # mean F = MTP's + 0.0056
    lines = mlearn.mtp_bar(spec, record)
    assert "| recipe | Si | 1.00x | +0.0056 | no |" in lines and "met on 4 of 5 elements." in lines[-1]
    del record["recipe/Ni/1"]
    assert "No setup has every seed" in mlearn.mtp_bar(spec, record)[-1]


def test_mlearn_budget_note_reads_both_stages():
    """The budget verdict follows search.md's rule: a run (either stage) whose best validation E or F fell
    by more than 2 % over its last 10 % is budget-limited and named; otherwise the runs count as converged."""
    mlearn = import_experiment("mlearn/run.py")
    run = lambda ended, e, f: {"ended": ended, "tail_fall_percent": {"val_e_mae": e, "val_f_mae": f}}  # noqa: E731
    flat = {"z/Si/0/stage1": run("early_stopping", 0.0, 0.4), "z/Si/0": run("epochs", 1.9, 0.0)}
    note = mlearn.budget_note(flat)
    assert "Stage ones (1): 1 ended by early stop" in note and "Final runs (single stage or stage two) (1): 1 ended by " \
        "schedule end" in note and "budget is not what limits" in note
    # still falling, but stopped early: not budget-limited; energy alone or forces alone above 2 %: limited
    note = mlearn.budget_note({**flat, "z/Mo/0/stage1": run("early_stopping", 5.0, 5.0), "z/Mo/0": run("epochs", 0.0, 0.0)})
    assert "budget is not what limits" in note
    note = mlearn.budget_note({**flat, "z/Mo/0/stage1": run("cap", 0.0, 2.5), "z/Mo/0": run("epochs", 2.1, 0.0),
                               "z/Li/0": {"ended": "cap", "tail_fall_percent": {}}})
    assert "2 of the 5 trained stages and runs ended at their cap" in note and ": z/Mo/0, z/Mo/0/stage1." in note
    assert "1 too short for a tail fall" in note
    assert mlearn.budget_note({"zeroshot/Si/-": {}}) == "Budget: no finished run yet."


def test_epoch_times_plan_and_median(tmp_path):
    """experiments/mlearn/epoch_times.py: one timing run per setup and element of the committed protocol
    (seed 0, a stage one for a two-stage setup, its planned epochs: they set the padding budgets), no
    test file, no early stopping, a cap in minutes; the epoch time is the median after the compiling
    first epoch and after each restart of a resumed run."""
    times = import_experiment("mlearn/epoch_times.py")
    spec = json.loads((ROOT / "experiments" / "mlearn" / "protocol.json").read_text())
    one = {k: v for k, v in spec["setups"]["finetune"].items() if k != "stage_two"}
    spec["setups"]["one"], spec["setups"]["two"] = one, {**one, "stage_two": {"fraction": 0.2, "over": {}}}
    runs = times.timing_runs(spec, tmp_path, 3.0)
    want = [f"{s}/{el}" for s, v in spec["setups"].items() for el in v["epochs"]]
    assert [r.key for r in runs] == want and len({r.workdir for r in runs}) == len(runs)
    for r in runs:
        assert r.test is None and r.cap_minutes == 3.0 and "test" not in r.config["data"]
        setup, el = r.key.split("/")
        planned = spec["setups"][setup]["epochs"][el]
        staged = spec["setups"][setup].get("stage_two")
        assert r.config["optim"]["epochs"] == (round((1 - staged["fraction"]) * planned) if staged else planned)
        assert r.config["optim"]["early_stopping_patience"] == 0  # off
        assert r.config["run"]["seed"] == 0 and r.config["data"]["train"].endswith("_train.extxyz")
    two = next(r for r in runs if r.key == "two/Si")
    assert two.config["model"] == next(r for r in runs if r.key == "one/Si").config["model"]  # stage one's own model
    (tmp_path / "metrics.csv").write_text("epoch,val_loss,wall_s\n1,0.5,60.0\n2,0.4,80.0\n3,0.3,101.0\n4,0.2,119.0\n")
    assert times.epoch_seconds(tmp_path / "metrics.csv") == (20.0, 40.0, 3)  # 20, 21, 18: the compile epoch left out
    (tmp_path / "metrics.csv").write_text("epoch,wall_s\n1,60.0\n2,80.0\n3,70.0\n4,89.0\n5,110.0\n")
    assert times.epoch_seconds(tmp_path / "metrics.csv") == (20.0, 40.0, 3)  # resumed after epoch 2: 20, 19, 21
    assert times.horizon(45, 20.0, 40.0) == 133  # (2700 - 40) // 20
    (tmp_path / "metrics.csv").write_text("epoch,wall_s\n1,60.0\n")
    with pytest.raises(ValueError, match="at least 2"):
        times.epoch_seconds(tmp_path / "metrics.csv")




@pytest.mark.slow  # one pinned training subprocess (~1 min): outside the default suite (-m slow)
def test_epoch_times_driver(tmp_path):
    """epoch_times.py end to end on the fixture: a timing run trains its epochs and the table gives its
    s/epoch and the horizon the cap allows; no test file is needed or touched."""
    _protocol_files(tmp_path)
    (tmp_path / "X_test.extxyz").unlink()
    spec = json.loads((ROOT / "experiments" / "mlearn" / "protocol.json").read_text())
    spec.update(data="{element}_{split}.extxyz", cap_minutes=45)
    spec["base"]["data"]["valid_fraction"] = 0.25
    spec["setups"] = {"finetune": {"epochs": {"X": 500}, "config": spec["setups"]["finetune"]["config"]}}  # the cap ends it
    (tmp_path / "protocol.json").write_text(json.dumps(spec))
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "mlearn" / "epoch_times.py"), "--protocol",
                          str(tmp_path / "protocol.json"), "--minutes", "1.5", "--lanes", "1", "--root", str(tmp_path / "t")],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    row = next(line for line in out.stdout.splitlines() if line.startswith("| finetune/X |"))
    seconds, timed, overhead, cap, horizon = (c.strip() for c in row.split("|")[2:7])
    assert cap == "45" and int(timed) >= 1 and int(horizon) > 0
    # the printed s/epoch is rounded to 0.1 s (a fraction of a second here): the horizon agrees within that
    assert int(horizon) == pytest.approx((2700 - float(overhead)) / float(seconds), rel=0.1 / float(seconds) + 0.01)
    assert not (tmp_path / "t" / "finetune_X" / "test.json").exists()
