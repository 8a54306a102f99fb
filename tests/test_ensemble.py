"""Ensembles: stacked members, bundles, the calculator's spreads, training in one vmapped step,
calibration, uncertainty in MD, and the errors on bad input."""

from __future__ import annotations

import json
import re
import shutil

import ase.io
import jax
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from helpers import TINY, checkpoint_state, tiny_train_config, train_killed_and_resumed
from jaxmat import load_model
from jaxmat.calculators import JaxmatCalculator
from jaxmat.models import BundleError, Ensemble, Model, stack_members
from jaxmat._checks import ConfigError
from jaxmat.cli import main

_BASE = {"data": {"valid_fraction": 0.25, "graphs_per_batch": 2},
         "optim": {"epochs": 2, "learning_rate": 5e-3, "warmup_epochs": 0.5},
         "run": {"progress": False, "checkpoint_every_steps": 1, "dtype": "float64"}}


def _perturbed(model, k: int, scale: float = 0.05) -> Model:
    """The pretrained model with its readout weights perturbed (seed k): a member that disagrees."""
    rng = np.random.default_rng(k)
    readout = jax.tree_util.tree_map(lambda x: np.asarray(x) * (1 + scale * rng.normal(size=np.shape(x))),
                                     model.params["readout"])
    return model.with_params({**model.params, "readout": readout})


@pytest.fixture(scope="module")
def si_rattled():
    a = bulk("Si", "diamond", 5.43, cubic=True)
    a.rattle(0.05, seed=1)
    return a


def _results(calc, atoms):
    a = atoms.copy()
    a.calc = calc
    a.get_potential_energy()
    return calc.results


@pytest.mark.parametrize("kind", ["deep", "shallow"])
def test_identical_members_have_zero_spread_and_equal_the_single_model(model, calc64, si_rattled, kind):
    ens = stack_members([model] * 3, kind=kind, allow_identical=True)
    calc = JaxmatCalculator(ens, dtype="float64")
    got, ref = _results(calc, si_rattled), _results(calc64, si_rattled)
    assert got["energy"] == pytest.approx(ref["energy"], abs=1e-10)
    np.testing.assert_allclose(got["forces"], ref["forces"], atol=1e-10)
    np.testing.assert_allclose(got["stress"], ref["stress"], atol=1e-12)
    assert got["energy_std"] < 1e-10 and got["forces_std"].max() < 1e-10 and got["stress_std"].max() < 1e-12
    assert got["forces_members"].shape == (3, len(si_rattled), 3) and got["energies_members"].shape == (3,)


def test_spreads_are_the_members_std_times_the_calibration(model, si_rattled, tmp_path):
    members = [_perturbed(model, k) for k in range(4)]
    ens = stack_members(members).with_calibration({"energy": 2.0, "forces": 3.0, "stress": 0.5, "method": "test"})
    ens.save(tmp_path / "ens")
    loaded = load_model(tmp_path / "ens")  # a format-3 bundle round trip
    assert isinstance(loaded, Ensemble) and loaded.size == 4 and loaded.calibration["forces"] == 3.0
    res = {}
    for mode in ("vmap", "sequential"):
        res[mode] = _results(JaxmatCalculator(loaded, dtype="float64", ensemble_mode=mode), si_rattled)
    singles = [_results(JaxmatCalculator(m, dtype="float64"), si_rattled) for m in members]
    e = np.array([s["energy"] for s in singles])
    f = np.stack([s["forces"] for s in singles])
    for got in res.values():
        np.testing.assert_allclose(got["energies_members"], e, atol=1e-9)
        np.testing.assert_allclose(got["forces_members"], f, atol=1e-9)
        assert got["energy"] == pytest.approx(e.mean(), abs=1e-9)
        assert got["energy_std"] == pytest.approx(2.0 * e.std(ddof=1), rel=1e-6)
        np.testing.assert_allclose(got["forces_std"], 3.0 * f.std(axis=0, ddof=1), rtol=1e-6, atol=1e-12)
    assert res["vmap"]["energy_std"] > 1e-4  # the perturbed members do disagree


def test_ensemble_calculator_compiles_once_per_bucket(model):
    calc = JaxmatCalculator(stack_members([model] * 2, kind="shallow", allow_identical=True))
    for k in range(3):
        a = bulk("Si", "diamond", 5.43, cubic=True).repeat((2, 2, 2))
        a.rattle(0.02, seed=k)
        a.calc = calc
        a.get_forces()
    assert calc.n_compilations == 1


def _train(tmp_path, labelled_file, name, **over):
    from jaxmat.train import config_from_dict, train_and_evaluate

    cfg = config_from_dict(tiny_train_config(labelled_file, _BASE, **over))
    train_and_evaluate(cfg, tmp_path / name, log=lambda *a: None)
    return tmp_path / name


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_each_deep_member_trains_exactly_as_it_would_alone(tmp_path, labelled_file):
    """Two members in one vmapped step (init seeds 0 and 1) vs two single runs with those init
    seeds and the same data order: float64 parameters and optimizer states agree to round-off."""
    ens = checkpoint_state(_train(tmp_path, labelled_file, "ens", ensemble={"kind": "deep", "size": 2}, run={"max_steps": 3}))
    assert int(ens["step"]) == 3
    for k in range(2):
        alone = checkpoint_state(_train(tmp_path, labelled_file, f"alone{k}", run={"max_steps": 3, "init_seed": k}))
        for key in ("params", "ema", "opt_state"):
            a, b = jax.tree_util.tree_leaves(ens[key]), jax.tree_util.tree_leaves(alone[key])
            assert len(a) == len(b)
            for x, y in zip(a, b):
                np.testing.assert_allclose(np.asarray(x)[k], np.asarray(y), rtol=1e-12, atol=1e-13)


@pytest.mark.slow
def test_shallow_ensemble_trains_and_is_calibrated_on_validation(tmp_path, labelled_file):
    wd = _train(tmp_path, labelled_file, "shallow", ensemble={"kind": "shallow", "size": 3})
    ens = load_model(wd / "best_model")
    assert isinstance(ens, Ensemble) and ens.kind == "shallow" and ens.stacked == ("readout",)
    assert ens.calibration["method"] == "nll" and ens.calibration["forces"] > 0
    results = json.loads((wd / "results.json").read_text())
    assert results["valid"]["uncertainty"]["forces"]["calibrated"]["scale"] == pytest.approx(1.0, rel=1e-6)
    assert (wd / "uncertainty_valid_reliability.png").is_file()


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_sigkill_then_resume_of_an_ensemble_equals_the_uninterrupted_run(tmp_path, labelled_file):
    # no validation and fewer steps than an epoch: the runs end without the (costly) final evaluation
    cfg = tiny_train_config(labelled_file, _BASE, ensemble={"kind": "deep", "size": 2}, data={"valid_fraction": 0},
                            run={"dtype": "float32", "max_steps": 5}, optim={"epochs": 2})
    full, resumed = train_killed_and_resumed(tmp_path, cfg, lambda state: 0 < int(state["step"]) < 5)
    assert int(full["step"]) == int(resumed["step"]) == 5
    for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_md_logs_the_force_std_and_stops_above_the_threshold(model, tmp_path):
    from jaxmat.md import MDSettings, run_md

    ens = stack_members([_perturbed(model, k, 0.2) for k in range(3)], kind="shallow")
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    out = tmp_path / "flagged.extxyz"
    log = run_md(atoms, JaxmatCalculator(ens), MDSettings(steps=20, log_every=5, max_force_std=1e-6),
                 trajectory=None, log=lambda *a: None, uncertain_file=str(out))
    assert log["stopped_at"] == 0 and list(log["uncertain_steps"]) == [0]
    frame = ase.io.read(out)
    assert frame.info["step"] == 0 and frame.info["max_force_std"] > 1e-6
    log = run_md(bulk("Si", "diamond", 5.43, cubic=True), JaxmatCalculator(ens), MDSettings(steps=10, log_every=5),
                 trajectory=None, log=lambda *a: None)
    assert len(log["max_force_std"]) == 3 and np.all(log["max_force_std"] > 0) and log["stopped_at"] == -1


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_cli_evaluate_prints_the_calibration_table_and_writes_plots(model, labelled_file, tmp_path, capsys):
    from jaxmat.cli import main

    paths = []
    for k in range(3):
        paths.append(str(_perturbed(model, k).save(tmp_path / f"member{k}")))
    assert main(["ensemble", str(tmp_path / "ens"), *paths, "--calibrate-on", str(labelled_file)]) == 0
    assert "deep ensemble of 3 M3GNet members" in capsys.readouterr().out
    assert load_model(tmp_path / "ens").calibration["method"] == "nll"
    assert main(["evaluate", str(tmp_path / "ens"), str(labelled_file), "--plots", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"forces\s+eV/A\s+raw", out) and "Spearman" in out and "deep ensemble of 3" in out
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"si_labelled_reliability.png", "si_labelled_scatter.png"}


# ------------------------------------------------------------------------------------------ bad input
def test_bad_ensembles_are_refused(model, tmp_path, labelled_file):
    with pytest.raises(ConfigError, match="at least 2 members"):
        stack_members([model])
    tiny = Model("M3GNet", {"element_types": ["Si"], "dim_node": 16}, None)
    with pytest.raises(ConfigError, match="not the architecture of member 0.*dim_node"):
        stack_members([model, tiny])
    with pytest.raises(ConfigError, match="differs from member 0 in the shared group"):
        stack_members([model, _perturbed(model, 1).with_params({**model.params, "conv_0_edge": jax.tree_util.tree_map(
            lambda x: x + 1, model.params["conv_0_edge"])})], kind="shallow")
    with pytest.raises(ConfigError, match="ensemble.size = 1"):
        tiny_cfg = tiny_train_config(labelled_file, _BASE, ensemble={"kind": "deep", "size": 1})
        from jaxmat.train import config_from_dict
        config_from_dict(tiny_cfg)
    from jaxmat.md import MDSettings, run_md
    with pytest.raises(ConfigError, match="needs an ensemble"):
        run_md(bulk("Si"), JaxmatCalculator(model), MDSettings(max_force_std=0.1), trajectory=None)


def test_calibration_needs_labels(model, tmp_path):
    from jaxmat.data import DatasetError, read_frames
    from jaxmat.train import fit_calibration, predict_members

    a = bulk("Si", "diamond", 5.43, cubic=True)
    ase.io.write(tmp_path / "unlabelled.extxyz", [a])
    frames = read_frames(tmp_path / "unlabelled.extxyz", require=())
    ens = stack_members([_perturbed(model, k) for k in range(2)])
    with pytest.raises(DatasetError, match="no energy, force or stress labels"):
        fit_calibration(ens, predict_members(ens, frames))


def test_tampered_ensemble_bundles_are_refused(model, tmp_path):
    stack_members([_perturbed(model, k) for k in range(2)]).save(tmp_path / "ens")
    cfg_file = tmp_path / "ens" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["ensemble"]["calibration"]["forces"] = 0.01  # a hand-edited calibration changes every sigma
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="edited after it was saved"):
        load_model(tmp_path / "ens")


def test_out_of_sample_calibration_uses_only_the_members_that_did_not_see_a_frame():
    """K = 8 sub-sampled members: those that trained on a frame reproduce its label exactly (they
    would shrink the spread to nothing); the others scatter with spread `s` around a mean that is
    off the label by alpha x s. The Musil/Imbalzano alpha of the out-of-sample members (M >= 4 of
    them; it is unbiased for each M) recovers alpha."""
    from jaxmat.train import fit_calibration

    rng = np.random.default_rng(3)
    K, n, alpha = 8, 20_000, 2.5
    seen = rng.random((K, n)) < 0.4
    s = rng.uniform(0.01, 0.1, n)
    ref = rng.normal(size=n)
    values = (ref + alpha * s * rng.normal(size=n)) + s * rng.normal(size=(K, n))
    values = np.where(seen, ref, values)
    pred = {"energy": values, "energy_ref": ref, "energy_frame": np.arange(n),
            "forces": np.zeros((K, 0, 3)), "forces_ref": np.zeros((0, 3)), "forces_frame": np.zeros(0, int),
            "stress": np.zeros((K, 0, 3, 3)), "stress_ref": np.zeros((0, 3, 3)), "stress_frame": np.zeros(0, int)}
    ens = stack_members([Model("M3GNet", {"element_types": ["Si"]}, {"readout": {"w": np.zeros(2)}})] * K,
                        allow_identical=True)
    cal = fit_calibration(ens, pred, "musil", seen)
    assert cal["energy"] == pytest.approx(alpha, rel=0.05)
    assert cal["method"] == "musil, out of sample"
    with_in_sample = fit_calibration(ens, pred, "musil")  # every member counted: mean and spread are wrong
    assert abs(with_in_sample["energy"] - alpha) > 1.0


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_vmapped_and_sequential_deep_steps_agree(labelled_file, monkeypatch):
    """The two ways of mapping a deep ensemble's step over its members give the same float64 numbers."""
    import jaxmat.train._steps as steps
    from jaxmat.data import batch_budget, build_graphs, epoch_groups, make_batch, read_frames
    from jaxmat.train import config_from_dict
    from jaxmat.train._optim import make_optimizer
    from jaxmat.train._setup import make_model

    cfg = config_from_dict(tiny_train_config(labelled_file, _BASE, ensemble={"kind": "deep", "size": 2}))
    frames = read_frames(labelled_file)
    model = make_model(cfg.model, cfg.run, frames, "atoms")
    out = {}
    with jax.enable_x64(True):
        graphs = build_graphs(frames, model)
        budget = batch_budget(graphs, 2)
        idx = epoch_groups(graphs, budget, 0, 0)[0]
        batch = steps.member_batch(cfg.ensemble, make_batch(idx, frames, graphs, budget, "float64"), idx,
                                   np.array([[1.0] * 12, [0.0, 1.0] * 6]), [len(f.atoms) for f in frames])
        members = [jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), model.init_params(batch.graph, k))
                   for k in range(2)]
        params = steps.stack(cfg.ensemble, members)
        tx = make_optimizer(cfg.optim, 5)
        for mode in ("vmap", "sequential"):
            monkeypatch.setattr(steps, "member_mode", lambda m=mode: m)
            train_step, _ = steps.build_steps(cfg, steps.ensemble_template(cfg.ensemble, model, members[0]), tx, "atoms")
            out[mode] = jax.device_get(train_step(params, jax.vmap(tx.init)(params), params, batch, 1.0))
    for a, b in zip(jax.tree_util.tree_leaves(out["vmap"]), jax.tree_util.tree_leaves(out["sequential"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)


# ------------------------------------------------- issue 45: honest calibration from `jaxmat ensemble`
@pytest.fixture(scope="module")
def tiny_members(tmp_path_factory):
    """Four TINY Si members (fresh parameters, seeds 0-3) saved as bundles: they disagree a lot."""
    from jaxmat.models import fresh_params

    hyper, root = {**TINY, "element_types": ["Si"]}, tmp_path_factory.mktemp("members")
    return [str(Model("M3GNet", hyper, fresh_params("M3GNet", hyper, k), {"name": f"tiny{k}"}).save(root / f"tiny{k}"))
            for k in range(4)]


@pytest.fixture(scope="module")
def few_frames(tmp_path_factory, labelled_file):
    """Four labelled frames (energy, forces, stress), and the same four with their energies only."""
    frames, root = ase.io.read(labelled_file, ":4"), tmp_path_factory.mktemp("few")
    energy_only = []
    for a in frames:
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=a.get_potential_energy())
        energy_only.append(b)
    ase.io.write(root / "full.extxyz", frames)
    ase.io.write(root / "energy_only.extxyz", energy_only)
    return str(root / "full.extxyz"), str(root / "energy_only.extxyz")


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_musil_needs_4_members_in_the_cli_as_in_the_config(tiny_members, few_frames, labelled_file, tmp_path, capsys):
    from jaxmat.train import config_from_dict

    out = tmp_path / "ens"
    assert main(["ensemble", str(out), *tiny_members[:2], "--calibrate-on", few_frames[0], "--method", "musil"]) == 2
    err = capsys.readouterr().err
    assert "at least 4 members" in err and "has 2" in err and "use --method nll" in err and not out.exists()
    with pytest.raises(ConfigError, match="at least 4 members.*has 2; use ensemble.calibration = 'nll'"):
        config_from_dict(tiny_train_config(labelled_file, _BASE, ensemble={"kind": "deep", "size": 2, "calibration": "musil"}))
    assert main(["ensemble", str(out), *tiny_members, "--calibrate-on", few_frames[0], "--method", "musil"]) == 0
    cal = load_model(out).calibration
    assert cal["method"] == "musil" and all(cal[q] > 0 and cal[q] != 1.0 for q in ("energy", "forces", "stress"))


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_calibrating_on_energies_only_leaves_forces_and_stress_not_calibrated(tiny_members, few_frames, si_rattled,
                                                                              tmp_path, capsys):
    from jaxmat.md import MDSettings, run_md

    out = tmp_path / "ens"
    assert main(["ensemble", str(out), *tiny_members[:3], "--calibrate-on", few_frames[1]]) == 0
    said = capsys.readouterr()
    assert "no forces labels" in said.err and "no stress labels" in said.err
    assert "not calibrated (forces), not calibrated (stress) [nll]" in said.out
    stored = json.loads((out / "config.json").read_text())["ensemble"]["calibration"]
    assert stored["forces"] is None and stored["stress"] is None and stored["energy"] > 0
    ens = load_model(out)
    assert ens.is_calibrated("energy") and not ens.is_calibrated("forces") and not ens.is_calibrated("stress")
    calc = JaxmatCalculator(ens)
    res = _results(calc, si_rattled)  # the raw members' std where not calibrated
    np.testing.assert_allclose(res["forces_std"], res["forces_members"].std(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(res["stress_std"], res["stress_members"].std(axis=0, ddof=1), rtol=1e-12)
    assert res["energy_std"] == pytest.approx(stored["energy"] * res["energies_members"].std(ddof=1), rel=1e-12)
    with pytest.warns(UserWarning, match="forces spread of .* is NOT calibrated"):  # the MD watch says so
        run_md(bulk("Si", "diamond", 5.43, cubic=True), calc, MDSettings(steps=1, log_every=1, max_force_std=100.0),
               trajectory=None, log=lambda *a: None)
    assert main(["evaluate", str(out), few_frames[0], "--plots", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"forces\s+eV/A\s+not calibrated\s+-", text) and re.search(r"energy\s+meV/atom\s+x", text)


def test_identical_members_and_zero_spreads_are_refused(tiny_members, few_frames, tmp_path, capsys):
    from jaxmat.data import read_frames
    from jaxmat.train import fit_calibration, predict_members

    out = tmp_path / "ens"
    assert main(["ensemble", str(out), tiny_members[0], tiny_members[1], tiny_members[0], "--calibrate-on",
                 few_frames[0]]) == 2
    assert "members 0 (tiny0) and 2 (tiny0) have bit-identical parameters" in capsys.readouterr().err
    assert not out.exists()
    copies = stack_members([load_model(tiny_members[0])] * 2, allow_identical=True)  # on purpose: then no fit
    with pytest.raises(ConfigError, match=r"agree exactly \(zero spread\) on all 4 labelled energy entries"):
        fit_calibration(copies, predict_members(copies, read_frames(few_frames[0])))


def test_ensemble_does_not_write_over_an_existing_path_unless_forced(tiny_members, tmp_path, capsys):
    trained = tmp_path / "a"
    shutil.copytree(tiny_members[0], trained)
    before = {p.name: p.read_bytes() for p in trained.iterdir()}
    assert main(["ensemble", str(trained), tiny_members[1], tiny_members[2]]) == 2  # the output forgotten
    err = capsys.readouterr().err
    assert "exists (a model bundle)" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in trained.iterdir()} == before
    assert main(["ensemble", str(trained), tiny_members[1], tiny_members[2], "--force"]) == 0
    assert isinstance(load_model(trained), Ensemble)


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_evaluate_reports_each_quantity_in_one_named_unit(tiny_members, few_frames, tmp_path, capsys):
    """The calibration table's MAE of every quantity equals the metrics table's above it (meV/atom,
    eV/A, GPa): same unit, named in both."""
    out = tmp_path / "ens"
    assert main(["ensemble", str(out), *tiny_members[:3], "--calibrate-on", few_frames[0]]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["evaluate", str(out), few_frames[0], "--plots", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    for q, unit in (("energy", "meV/atom"), ("forces", "eV/A"), ("stress", "GPa")):
        mae = float(re.search(rf"^{q}\s+(\S+)\s+\S+\s+{re.escape(unit)}$", text, re.M).group(1))
        raw = float(re.search(rf"^{q}\s+{re.escape(unit)}\s+raw\s+(\S+)", text, re.M).group(1))
        assert raw == pytest.approx(mae, rel=1e-3, abs=2e-4), q
