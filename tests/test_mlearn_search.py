"""The mlearn recipe-search driver (experiments/mlearn/search.py) and the protocol's cap in one-core
minutes (experiments/_protocol.py): plans that never name a test file, runs that end at their cap and
say so, the curve-tail measure, and a tiny end-to-end search with a two-stage configuration."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import import_experiment
from test_experiments import _protocol_files

ROOT = Path(__file__).resolve().parents[1]


def _round_one(spec):
    """The committed spec as it stood before round 2 was written into it (round 2 adds "round_two", a
    "combined" configuration and the base's seeds on the best winner; round 3 its configurations)."""
    spec = json.loads(json.dumps(spec))
    spec.pop("round_two", None), spec.pop("round_three", None)
    spec["configs"] = [c for c in spec["configs"] if c["name"] != "combined" and c.get("round") != 3]
    for c in spec["configs"]:
        if c["name"] != "base":
            c.pop("seeds", None)
    return spec


def _tiny_spec(tmp_path, cap=30.0):
    spec = json.loads((ROOT / "experiments" / "mlearn" / "search_spec.json").read_text())
    spec.update(data=str(tmp_path / "{element}_train.extxyz"), elements=["X"], seeds=[0], cap_minutes=cap,
                epochs={"X": 2}, scale={"X": [1.0, 0.01]})
    spec["base"]["data"]["valid_fraction"] = 0.25
    spec["configs"] = [{"name": "base", "change": "the base recipe"},
                       {"name": "two", "change": "stage two", "stage_two": {
                           "fraction": 0.5, "over": {"loss": {"energy_weight": 30.0}, "optim": {"learning_rate": 1e-5}}}}]
    return spec


def test_search_spec_plans_validation_only_runs():
    """The committed spec: Si and Mo, every configuration a valid training config on a *_train file with
    a cap, never a test file; a stage two starts from its stage one's kept model with the rest of the cap."""
    plan = import_experiment("mlearn/search.py").plan

    from jaxmat.train import config_from_dict

    spec = json.loads((ROOT / "experiments" / "mlearn" / "search_spec.json").read_text())
    assert {"Si", "Mo"} <= set(spec["elements"]) and 30 <= spec["cap_minutes"] <= 60
    first, second = plan(spec, Path("/nonexistent"))
    runs = first + second
    assert len({r.key for r in runs}) == len(runs) and second
    for r in runs:
        assert r.test is None and "test" not in r.config["data"] and r.config["data"]["train"].endswith("_train.extxyz")
        assert 0 < r.cap_minutes <= spec["cap_minutes"]
        config_from_dict(r.config)
    by_key = {r.key: r for r in runs}
    for r in second:
        one = by_key[r.key + "/stage1"]
        assert r.config["model"]["init_from"] == str(one.workdir / "best_model")
        assert r.config["model"]["refit_element_refs"] is False
        assert r.cap_minutes + one.cap_minutes == pytest.approx(spec["cap_minutes"])
        assert r.config["run"]["seed"] == one.config["run"]["seed"]  # the same validation split
    with pytest.raises(ValueError, match="training files only"):
        plan({**spec, "data": "/x/{element}_test.extxyz"}, Path("/nonexistent"))


def test_tail_fall_and_cap_status(tmp_path):
    protocol = import_experiment("_protocol.py")
    ended, status, tail_fall = protocol.ended, protocol.status, protocol.tail_fall

    assert tail_fall([1.0] * 10) == 0.0
    assert tail_fall([1.0, 0.8, 0.9, 0.7, 0.6, 0.5, 0.5, 0.5, 0.5, 0.4]) == pytest.approx(20.0)  # best-so-far 0.5 -> 0.4
    assert tail_fall([2.0, 1.0, 1.5]) == 0.0 and tail_fall([1.0]) is None
    assert tail_fall([4.0] + [3.0] * 18 + [2.0]) == pytest.approx(100 / 3)  # 20 epochs: the last 2
    wd = tmp_path / "run"
    wd.mkdir()
    (wd / "checkpoint.msgpack").write_text("")
    (wd / "protocol.json").write_text(json.dumps({"key": "k", "config": {}, "test": None, "cap_minutes": 10.0}))
    (wd / "results.json").write_text(json.dumps({"ended": "wall_time"}))
    (wd / "minutes.json").write_text("[4.0, 5.0]")
    assert status(wd) == "partial" and ended(wd) == "wall_time"  # stopped by a per-call limit: resumed
    (wd / "minutes.json").write_text("[4.0, 5.0, 1.5]")
    assert status(wd) == "trained" and ended(wd) == "cap"


@pytest.mark.slow  # three pinned training subprocesses (~1-2 min on 2 cores): outside the default suite (-m slow)
def test_search_driver_smoke(tmp_path):
    """A tiny search end to end: a one-stage and a two-stage configuration; validation numbers recorded,
    the report table written under the plan, nothing evaluated on a test file; a second call trains nothing."""
    _protocol_files(tmp_path)
    (tmp_path / "X_test.extxyz").unlink()  # the search must not need (or touch) a test file
    spec = _tiny_spec(tmp_path)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "search.md").write_text("# plan\n\nwritten before the search.\n")
    cmd = [sys.executable, str(ROOT / "experiments" / "mlearn" / "search.py"), "--spec", str(tmp_path / "spec.json"),
           "--root", str(tmp_path), "--lanes", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    record = json.loads((tmp_path / "search_record.json").read_text())
    assert set(record) == {"base/X/0", "two/X/0/stage1", "two/X/0"}
    for r in record.values():
        assert r["test"] is None and r["ended"] in ("epochs", "early_stopping", "cap") and r["valid"]["f_mae"] > 0
        assert set(r["tail_fall_percent"]) == {"val_loss", "val_e_mae", "val_f_mae"}
        assert not any(Path(tmp_path / "search_runs").glob("*/test.json"))
    assert record["two/X/0/stage1"]["epochs"] == 1 and record["two/X/0"]["epochs"] == 1
    stage2 = json.loads((tmp_path / "search_runs" / "two_X_0" / "protocol.json").read_text())
    assert stage2["config"]["loss"]["energy_weight"] == 30.0 and stage2["cap_minutes"] == pytest.approx(15.0)
    md = (tmp_path / "search.md").read_text()
    assert md.startswith("# plan\n\nwritten before the search.") and "| base | the base recipe | X | 1 |" in md
    assert "| two | stage two | X | 1 |" in md and "Mean score over X" in md
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "2 of 2 runs finished; 0 to go" in again.stdout, again.stderr[-2000:]
    assert json.loads((tmp_path / "search_record.json").read_text()) == record
    report = subprocess.run(cmd + ["--report"], capture_output=True, text=True, timeout=300)  # redraws, trains nothing
    assert report.returncode == 0 and "| base | the base recipe | X | 1 |" in report.stdout, report.stderr[-2000:]
    assert "runs finished" not in report.stdout and (tmp_path / "search.md").read_text() == md


def test_round_one_rule_and_round_two():
    """search.md's rule on a made-up record of the committed spec: a change wins its dimension only by
    more than the base's mean minus its sample std over seeds, scored on every element; the better of
    two winners is kept; no verdict before the base has its seeds; round 2 combines two or more winners
    (dated, once), gives the best one 3 seeds, and its seeds do not move round 1's verdicts."""
    search = import_experiment("mlearn/search.py")
    spec = _round_one(json.loads((ROOT / "experiments" / "mlearn" / "search_spec.json").read_text()))
    assert spec["elements"] == ["Si", "Mo"]

    def runs(name, seed, si, mo=None):  # runs scoring si on Si and mo on Mo: MAEs that many times the scale
        mo = si if mo is None else mo
        return {f"{name}/{el}/{seed}": {"valid": {"e_mae": x * spec["scale"][el][0], "f_mae": x * spec["scale"][el][1]}}
                for el, x in (("Si", si), ("Mo", mo))}

    # the base per seed: 2.2, 1.9, 1.9 -> mean 2.0, sample std 0.173 (population 0.141, std/sqrt(3) 0.1)
    record = {**runs("base", 0, 2.3, 2.1), **runs("base", 1, 1.8, 2.0)}
    assert search.verdicts(spec, record)[1] is None
    record.update(runs("base", 2, 1.9))
    record.update({**runs("lr1e-3", 0, 1.7), **runs("lr2e-3", 0, 1.8),  # both win; the better is not the last
                   **runs("E10", 0, 1.85),  # wins only with a population std or std/sqrt(3)
                   **runs("ema0", 0, 1.95),  # wins only against the base's seed 0
                   **runs("batch8", 0, 1.5, 2.5),  # wins only on Si alone
                   **runs("stage2", 0, 1.2, 1.8)})
    lines, winners = search.verdicts(spec, record)
    assert winners is None and "| learning rate | lr2.5e-4 | not run yet | | | |" in lines
    assert "| loss weights | E10 | 1.850 | +0.150 | no | +0.350 |" in lines  # paired with the base's seed 0 (2.2)
    assert "| learning rate | lr2e-3 | 1.800 | +0.200 | wins | +0.400 |" in lines
    with pytest.raises(ValueError, match="not complete"):
        search.round_two(spec, record, "2026-12-31")
    rest = {k: v for name in sum(spec["dimensions"].values(), []) for k, v in runs(name, 0, 2.0).items() if k not in record}
    lines, winners = search.verdicts(spec, {**record, **rest})
    assert {d: w for d, w in winners.items() if w} == {"learning rate": "lr1e-3", "second stage": "stage2"}, lines
    new = json.loads(search.dump_spec(search.round_two(spec, {**record, **rest}, "2026-12-31")))
    confs = {c["name"]: c for c in new["configs"]}
    assert confs["combined"]["over"] == {"optim": {"learning_rate": 1e-3}} and confs["combined"]["seeds"] == [0, 1, 2]
    assert confs["combined"]["stage_two"] == confs["stage2"]["stage_two"] and confs["stage2"]["seeds"] == [0, 1, 2]
    assert "seeds" not in confs["lr1e-3"] and "seeds" not in confs["lr2e-3"]
    assert "2026-12-31" in new["round_two"] and "stage2, lr1e-3" in new["round_two"]
    assert {k: v for k, v in new.items() if k not in ("configs", "round_two")} == {k: v for k, v in spec.items() if k != "configs"}
    with pytest.raises(ValueError, match="already has its round 2"):
        search.round_two(new, record, "2027-01-01")
    # round 2's seeds of stage2 (worse than its seed 0) leave round 1's verdicts as they were
    later = {**record, **rest, **runs("stage2", 1, 2.1), **runs("stage2", 2, 2.1)}
    assert search.verdicts(new, later) == search.verdicts(spec, {**record, **rest})

    # one winner: no "combined", that change gets the seeds; none: the base is the recipe
    flat = {**{k: v for k, v in record.items() if k.startswith("base/")},
            **{k: v for name in sum(spec["dimensions"].values(), []) for k, v in runs(name, 0, 2.0).items()}}
    one = json.loads(search.dump_spec(search.round_two(spec, {**flat, **runs("batch2", 0, 1.6)}, "d")))
    assert [c["name"] for c in one["configs"]] == [c["name"] for c in spec["configs"]]
    assert {c["name"] for c in one["configs"] if "seeds" in c} == {"base", "batch2"}
    none = search.round_two(spec, flat, "d")
    assert none["configs"] == spec["configs"] and "none (the base is the recipe)" in none["round_two"]
    with pytest.raises(ValueError, match="exactly one dimension"):
        search.verdicts({**spec, "dimensions": {"lr": ["lr1e-3"]}}, flat)


def test_recipe_rule_and_round_three():
    """Round 2's rule picks the best mean score over the base's seeds, a simpler candidate within the
    base's std taking the tie; round 3 trains that recipe from scratch per model and learning rate of the
    spec's plan (the model's own epochs, never a test file), once, and picks each model's best rate."""
    search = import_experiment("mlearn/search.py")
    spec = _round_one(json.loads((ROOT / "experiments" / "mlearn" / "search_spec.json").read_text()))

    def runs(name, seed, x):
        return {f"{name}/{el}/{seed}": {"valid": {"e_mae": x * spec["scale"][el][0], "f_mae": x * spec["scale"][el][1]}}
                for el in ("Si", "Mo")}

    base = {**runs("base", 0, 2.2), **runs("base", 1, 1.9), **runs("base", 2, 1.9)}  # 2.0 ± 0.173
    round_one = {k: v for n in sum(spec["dimensions"].values(), []) for k, v in runs(n, 0, 2.0).items()}
    record = {**base, **round_one, **runs("stage2", 0, 1.5), **runs("E10", 0, 1.6)}  # two winners
    assert search.recipe(spec, record)[1] is None  # round 2 not written yet
    with pytest.raises(ValueError, match="not complete"):
        search.round_three(spec, record, "d")
    two = search.round_two(spec, record, "d")
    assert next(c for c in two["configs"] if c["name"] == "combined")["changes"] == 2
    lines, pick = search.recipe(two, record)
    assert pick is None and "combined" in lines[0] and "stage2" in lines[0]
    seeds12 = lambda name, x: {**runs(name, 1, x), **runs(name, 2, x)}  # noqa: E731
    # stage2 best by 0.1 < std: the simpler of the tied (base 2.0 is outside the margin) -- combined has 2 changes
    done = {**record, **seeds12("stage2", 1.8), **runs("combined", 0, 1.7), **seeds12("combined", 1.7)}
    lines, pick = search.recipe(two, done)
    assert pick == "stage2" and "stage2 1.700, combined 1.700" in lines[0] and "**stage2**" in lines[0]
    done.update(seeds12("combined", 1.4))  # combined 1.5 vs stage2 1.7: beyond the margin, the better wins
    assert search.recipe(two, done)[1] == "combined"
    done.update(seeds12("stage2", 2.05))  # the base within 0.173 of the best single change: the base
    assert search.recipe(two, {**done, **seeds12("combined", 2.1), **runs("combined", 0, 2.1)})[1] == "base"

    if not all(m.get("epochs") for m in two["round_three_plan"]["models"].values()):  # the committed plan, unmeasured
        with pytest.raises(ValueError, match="no epoch horizon for"):
            search.round_three(two, done, "d")
        for m in two["round_three_plan"]["models"].values():
            m["epochs"] = m["epochs"] or {"Si": 90, "Mo": 110}
    three = search.round_three(two, done, "2026-12-31")
    new = [c for c in three["configs"] if c.get("round") == 3]
    plan = two["round_three_plan"]
    assert [c["name"] for c in new] == [f"{m}-lr{lr}" for m in plan["models"] for lr in ("1e-3", "2e-3", "4e-3")]
    combined = next(c for c in two["configs"] if c["name"] == "combined")
    for c in new:
        assert c["over"]["model"]["init_from"] is None and c["over"]["optim"]["learning_rate"] in plan["learning_rates"]
        assert c["stage_two"] == combined["stage_two"] and c["over"]["loss"] == combined["over"]["loss"]
        assert c["seeds"] == plan["seeds"] and c["epochs"] == plan["models"][c["model"]]["epochs"]
    assert "2026-12-31" in three["round_three"] and "(combined)" in three["round_three"]
    with pytest.raises(ValueError, match="already has its round 3"):
        search.round_three(three, done, "d")
    assert search.verdicts(three, done) == search.verdicts(two, done)  # round 3 is not a round-1 dimension

    from jaxmat.train import config_from_dict

    first, second = search.plan({**three, "data": "/x/{element}_train.extxyz"}, Path("/nonexistent"))
    for r in first + second:
        config_from_dict(r.config)
    full = {r.key: r for r in first + second}
    for r in second:  # stage two starts from stage one's model as it is: no architecture keys (they would grow it)
        assert r.config["model"].keys().isdisjoint({"family", "hyperparameters"}), r.config["model"]
    assert sum(full[k].config["optim"]["epochs"] for k in ("equivariant-lr2e-3/Mo/0", "equivariant-lr2e-3/Mo/0/stage1")) \
        == plan["models"]["equivariant"]["epochs"]["Mo"]
    assert full["equivariant-lr4e-3/Si/0/stage1"].config["model"]["hyperparameters"]["interaction"] == "equivariant"
    assert "equivariant-lr4e-3/Si/0/stage1" in full and "scratch-lr1e-3/Mo/1" not in full
    lines, picks = search.scratch_rates(three, done)
    assert picks is None and "waits for" in lines[-1]
    scores = {"scratch-lr1e-3": 3.0, "scratch-lr2e-3": 2.5, "scratch-lr4e-3": 2.8,
              "equivariant-lr1e-3": 2.9, "equivariant-lr2e-3": 3.1, "equivariant-lr4e-3": 2.7}
    done.update({k: v for n, x in scores.items() for k, v in runs(n, 0, x).items()})
    lines, picks = search.scratch_rates(three, done)
    assert picks == {"scratch": "scratch-lr2e-3", "equivariant": "equivariant-lr4e-3"}, lines


def test_protocol_trains_the_searched_recipe():
    """mlearn/protocol.json trains what the validation search chose, nothing else: its fine-tuning setup
    is round 2's recipe, each from-scratch setup round 3's pick for its model (once round 3 has picked),
    with the search's epochs on the search's elements; a setup that departs from a search configuration
    (SevenNet-0 instead of M3GNet) names the departure, and that is its only difference."""
    search = import_experiment("mlearn/search.py")
    merge = import_experiment("_protocol.py").merge
    searched_setup = import_experiment("mlearn/_rounds.py").searched_setup
    here = ROOT / "experiments" / "mlearn"
    protocol = json.loads((here / "protocol.json").read_text())
    spec = json.loads((here / "search_spec.json").read_text())
    record = json.loads((here / "search_record.json").read_text())
    _, pick = search.recipe(spec, record)
    assert pick is not None and protocol["setups"]["finetune"]["search"] == {"name": pick}
    _, rates = search.scratch_rates(spec, record)
    for model, name in (rates or {}).items():
        assert protocol["setups"][model]["search"] == {"name": name}, model
    searched = {k: s for k, s in protocol["setups"].items() if "search" in s}
    assert set(searched) == set(protocol["setups"])  # every setup is a searched configuration (or names how it departs)
    for key, s in searched.items():
        want = searched_setup(spec, s["search"]["name"])
        assert merge(protocol["base"], s["config"]) == merge(want["config"], s["search"].get("except", {})), key
        assert s.get("stage_two") == want["stage_two"], key
        if "except" not in s["search"]:  # the same model: the search's horizons (another model has its own)
            assert {el: s["epochs"][el] for el in want["epochs"]} == want["epochs"], key
    assert protocol["setups"]["finetune"]["epochs"].keys() == {"Ni", "Cu", "Li", "Mo", "Si"}
    assert protocol["cap_minutes"] == spec["cap_minutes"] and protocol["seeds"] == [0, 1, 2]
