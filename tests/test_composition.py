"""Composition -> property: formula parsing, featurisers, BRNet/IRNet/ElemNet at a parameter
budget, the iBRNet callbacks, training on real data, and the benchmark driver (smoke)."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxmat.arrays import FitConfig, early_stopping, fit, reduce_on_plateau, ridge_fit, warmup
from jaxmat.composition import ELEMNET_ELEMENTS, FormulaError, element_fractions, featurize, make_regressor, parse_formula
from jaxmat.composition import ElementAttention, match_budget

from helpers import FIXTURES, SHARED

ROOT = Path(__file__).resolve().parents[1]
TABLE = FIXTURES / "magpie_elements.csv"


@pytest.mark.parametrize("formula,expected", [
    ("Fe2O3", {"Fe": 2, "O": 3}),
    ("Ag(W3Br7)2", {"Ag": 1, "W": 6, "Br": 14}),
    ("CaMg(CO3)2", {"Ca": 1, "Mg": 1, "C": 2, "O": 6}),
    ("La2.1Bi5.9Pb2S14", {"La": 2.1, "Bi": 5.9, "Pb": 2, "S": 14}),
    ("FeOFe", {"Fe": 2, "O": 1}),
    ("K4[Fe(CN)6]".replace("[", "(").replace("]", ")"), {"K": 4, "Fe": 1, "C": 6, "N": 6}),
])
def test_parse_formula(formula, expected):
    got = parse_formula(formula)
    assert got.keys() == expected.keys() and all(got[k] == pytest.approx(v) for k, v in expected.items())


@pytest.mark.parametrize("bad,message", [
    ("Xx2", "unknown element 'Xx'"), ("fe2o3", "unexpected character 'f'"), ("Fe(O2", "unclosed"),
    ("Fe)2", "no matching"), ("2Fe", "follows no element"), ("Fe0", "must be positive"), ("", "empty"),
    ("Fe-2", "unexpected character '-'"), ("()", "empty brackets"), ("Fe2 O3$", "unexpected character '\\$'"),
])
def test_malformed_formulas_are_rejected_clearly(bad, message):
    with pytest.raises(FormulaError, match=message):
        parse_formula(bad)


def test_featurisers():
    x = element_fractions(["Fe2O3", "NaCl"])
    assert x.shape == (2, 86) and np.allclose(x.sum(1), 1.0)
    assert x[0, ELEMNET_ELEMENTS.index("O")] == pytest.approx(0.6)
    with pytest.raises(FormulaError, match="outside the 86-element"):
        element_fractions(["HeNe"])
    d = featurize(["Fe2O3", "NaCl", "Si"], "fractions+magpie", TABLE)
    assert d.shape == (3, 86 + 22 * 6)
    mag = d[:, 86:].reshape(3, 22, 6)  # (formula, property, stat); property 0 = Number (Z)
    assert mag[0, 0, 0] == pytest.approx(0.4 * 26 + 0.6 * 8)  # fraction-weighted mean Z
    assert mag[1, 0, 2:5].tolist() == [11.0, 17.0, 6.0]  # min, max, range of Z in NaCl
    assert mag[2, 0, 1] == 0.0  # no deviation for an element


def test_composition_attributes_by_hand():
    """Ward et al.'s attributes for NaCl: 2 elements, L2 norm 1/sqrt(2); valence electrons
    Na 3s1 and Cl 3s2 3p5 give s and p fractions 3/8 and 5/8; chi(Na) 0.93, chi(Cl) 3.16."""
    from jaxmat.composition._features import ATTRIBUTE_NAMES

    a = dict(zip(ATTRIBUTE_NAMES, featurize(["NaCl", "Si"], "attributes", TABLE).T))
    assert a["n_elements"].tolist() == [2.0, 1.0]
    assert a["stoich_l2"][0] == pytest.approx(0.5**0.5) and a["stoich_l10"][1] == pytest.approx(1.0)
    assert [a[f"frac_{o}_valence"][0] for o in "spdf"] == pytest.approx([3 / 8, 5 / 8, 0, 0])
    ionic = 1 - np.exp(-0.25 * (3.16 - 0.93) ** 2)
    assert a["max_ionic_char"][0] == pytest.approx(ionic, rel=1e-5)
    assert a["mean_ionic_char"][0] == pytest.approx(2 * 0.25 * ionic, rel=1e-5)  # ordered pairs
    assert a["max_ionic_char"][1] == 0.0
    assert featurize(["NaCl"], "fractions+magpie+attributes", TABLE).shape == (1, 86 + 132 + 12)
    with pytest.raises(ValueError, match="each at most once"):
        featurize(["NaCl"], "fractions+fractions", TABLE)


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
@pytest.mark.parametrize("arch", ["elemnet", "irnet", "brnet"])
def test_parameter_budget_is_matched(arch):
    kw, n = match_budget(arch, 218, 60_000)
    assert abs(n - 60_000) / 60_000 < 0.03
    model = make_regressor(arch, **kw)
    v = model.init(jax.random.PRNGKey(0), np.zeros((4, 218), np.float32))
    assert sum(x.size for x in jax.tree_util.tree_leaves(v["params"])) == n
    if arch == "elemnet":
        assert len(kw["widths"]) + 1 == 17  # 17 layers, as ElemNet


def test_callbacks_act_together():
    cbs = [warmup(2), reduce_on_plateau(patience=2, factor=0.5), early_stopping(patience=4)]
    states = [c.init() for c in cbs]
    scales, stopped = [], None
    for epoch, loss in enumerate([1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95], start=1):
        scale = 1.0
        for k, c in enumerate(cbs):
            states[k], act = c.update(states[k], {"epoch": epoch, "val_loss": loss})
            scale *= act.get("lr_scale", 1.0)
            if act.get("stop"):
                stopped = stopped or epoch
        scales.append(scale)
    assert scales[0] == 2.0  # warm-up 1/2 -> 1
    assert scales[3] == 0.5 and scales[5] == 0.5  # plateau after 2 bad epochs, twice
    assert stopped == 6  # 4 epochs without improvement


def _real_rows(n=1500):
    folder = SHARED / "data" / "composition" / "mp_bulk_modulus"
    if not folder.is_dir():
        pytest.skip(f"{folder} not available (../shared is absent)")
    import csv

    rows = list(csv.reader(open(folder / "train.csv")))[1 : n + 1]
    return [r[0] for r in rows], np.array([float(r[1]) for r in rows])


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_brnet_learns_real_bulk_moduli():
    formulas, y = _real_rows()
    x = featurize(formulas, "fractions+magpie", TABLE)
    tr, va = slice(0, 1200), slice(1200, None)
    kw, _ = match_budget("brnet", x.shape[1], 30_000)
    model = make_regressor("brnet", **kw)
    res = fit(model, x[tr], y[tr], x[va], y[va], FitConfig(max_epochs=25, batch_size=64, seed=0))
    baseline = np.mean(np.abs(y[va] - y[tr].mean()))
    assert res.history[-1]["val_mae"] < 0.6 * baseline, (res.history[-1], baseline)
    pred = res.predict(model, x[va])
    assert np.mean(np.abs(pred - y[va])) == pytest.approx(min(h["val_mae"] for h in res.history), rel=1e-4)
    predict, alpha, _ = ridge_fit(x[tr], y[tr], x[va], y[va])
    assert np.mean(np.abs(predict(x[va]) - y[va])) < baseline


@pytest.mark.slow  # minutes on 2 cores: outside the default suite (-m slow)
def test_composition_driver_smoke(tmp_path):
    cfg = json.loads((ROOT / "experiments" / "composition" / "config.json").read_text())
    data = tmp_path / "data" / "toy"
    data.mkdir(parents=True)
    formulas, y = (["NaCl", "KCl", "MgO", "CaO", "Fe2O3", "Al2O3", "SiO2", "TiO2"] * 40,
                   np.linspace(0.1, 1.1, 320))
    for split in ("train", "val", "test"):
        (data / f"{split}.csv").write_text("formula,target\n" + "".join(f"{f},{t}\n" for f, t in zip(formulas, y)))
    (tmp_path / "data" / "el.csv").write_text(TABLE.read_text())
    cfg.update(data_root=str(tmp_path / "data"), element_table="el.csv", element_embedding="el.csv", param_budget=5000,
               datasets={"toy": {"unit": "u", "published": {}}})
    cfg["fit"].update(batch_size=32)
    cfg["dropout_grid"] = [0.0]  # one config-wide rate keeps the smoke short; the model grids below test the search
    cfg["models"]["brnet_branched"]["dropout_grid"] = [0.2]  # a model's own grid beats the config-wide one
    cfg["models"]["brnet_branched"]["weight_decay_grid"] = [0.0, 0.5]
    cfg["models"]["irnet_residual"]["target_transform_grid"] = ["none", "log"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "composition" / "run.py"), str(tmp_path / "cfg.json"),
                          "--seeds", "0", "--max-epochs", "2"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    for m in cfg["models"]:
        assert f"| toy | {m} |" in table
    assert (tmp_path / "curves_toy.png").is_file()
    keys = json.loads((tmp_path / "results.json").read_text())
    assert sorted(k for k in keys if "|brnet_branched|" in k) == [
        "toy|brnet_branched|seed0|dropout=0.2", "toy|brnet_branched|seed0|dropout=0.2|wd=0.5"]
    assert keys["toy|brnet_branched|seed0|dropout=0.2|wd=0.5"]["weight_decay"] == 0.5
    assert "dropout, weight decay, target transform" in table
    assert sorted(k for k in keys if "|irnet_residual|" in k) == sorted(
        f"toy|irnet_residual|seed0|dropout={r}{t}" for r in cfg["dropout_grid"] for t in ("", "|log"))
    assert keys["toy|irnet_residual|seed0|dropout=0.0|log"]["target_transform"] == "log"
    attention = [r for k, r in keys.items() if "|attention_elements|" in k]
    assert attention and all(abs(r["params"] - 5000) < 1500 and r["dim"] % 4 == 0 for r in attention)


def _driver():
    import importlib.util

    spec = importlib.util.spec_from_file_location("composition_run", ROOT / "experiments" / "composition" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_composition_driver_folds_and_dropout_selection(tmp_path):
    """matbench-style folds give one run per fold with that fold's files; the table's dropout rate
    is the one with the lowest mean VALIDATION MAE (never the test MAE), among complete rates."""
    run = _driver()
    for k in range(2):
        for split in ("train", "val", "test"):
            (tmp_path / f"{split}{k}.csv").write_text(f"formula,target\nNaCl,{k}\nMgO,{k + 0.5}\n")
    runs = run.dataset_runs(tmp_path, {"folds": 2}, seeds=[0, 1, 2])
    assert [(r[0], r[1]) for r in runs] == [("fold0", 0), ("fold1", 0)]
    assert runs[1][2]["test"][1].tolist() == [1.0, 1.5]
    assert [r[:2] for r in run.dataset_runs(tmp_path, {}, seeds=[0, 1])] == [("seed0", 0), ("seed1", 1)]
    assert [r[:2] for r in run.dataset_runs(tmp_path, {"seeds": [3]}, seeds=[0, 1])] == [("seed3", 3)]

    def res(rate, run_id, val, test):
        return {"dropout": rate, "run": run_id, "val_mae": val, "test_mae": test}

    results = {"d|m|seed0|dropout=0.0": res(0.0, "seed0", 1.0, 5.0), "d|m|seed1|dropout=0.0": res(0.0, "seed1", 1.2, 5.0),
               "d|m|seed0|dropout=0.1": res(0.1, "seed0", 0.9, 9.0), "d|m|seed1|dropout=0.1": res(0.1, "seed1", 1.0, 9.0),
               "d|m|seed0|dropout=0.2": res(0.2, "seed0", 0.1, 0.1)}  # incomplete: never chosen
    rate, rs = run.select(results, "d", "m", n_runs=2)
    assert rate == (0.1, 0.0, "none") and [r["run"] for r in rs] == ["seed0", "seed1"]
    results.update({f"d|m|seed{k}|dropout=0.1|wd=2.0": {**res(0.1, f"seed{k}", 0.5, 7.0), "weight_decay": 2.0}
                    for k in range(2)})
    assert run.select(results, "d", "m", n_runs=2)[0] == (0.1, 2.0, "none")  # weight decay is part of the choice
    results.update({f"d|m|seed{k}|dropout=0.0|log": {**res(0.0, f"seed{k}", 0.4, 6.0), "target_transform": "log"}
                    for k in range(2)})
    assert run.select(results, "d", "m", n_runs=2)[0] == (0.0, 0.0, "log")  # and so is the target transform
    assert run.select(results, "other", "m", n_runs=2) == (None, [])


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_inputs_outside_the_training_range_are_clipped():
    """A feature that is almost constant in training must not blow up a prediction (z-score 1e7)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    x[:, 2] = 1e-7 * rng.normal(size=400)
    y = x[:, 0] + 0.5 * x[:, 1]
    x_new = np.array([[0.3, -0.2, 1.0]])
    truth = 0.3 - 0.1
    predict, _, _ = ridge_fit(x[:300], y[:300], x[300:], y[300:])
    assert abs(predict(x_new)[0] - truth) < 0.05
    unclipped, _, _ = ridge_fit(x[:300], y[:300], x[300:], y[300:], clip_inputs=False)
    assert abs(unclipped(x_new)[0] - truth) > 1.0  # the failure mode the clipping removes
    kw, _ = match_budget("brnet", 3, 3000)
    model = make_regressor("brnet", **kw)
    res = fit(model, x[:300], y[:300], x[300:], y[300:], FitConfig(max_epochs=30, batch_size=64, seed=0))
    assert abs(res.predict(model, x_new)[0] - truth) < 0.5


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_log_target_transform():
    """Training on log(y): predictions come back in target units (positive), the validation MAE the
    callbacks saw is the MAE of those predictions, and targets that are not all positive are refused."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 4))
    y = 100.0 * np.exp(0.6 * x[:, 0] - 0.3 * x[:, 1])  # positive, right-skewed like a bulk modulus
    tr, va = slice(0, 800), slice(800, None)
    kw, _ = match_budget("irnet", 4, 5_000)
    model = make_regressor("irnet", **kw)
    res = fit(model, x[tr], y[tr], x[va], y[va], FitConfig(max_epochs=20, batch_size=64, seed=0, target_transform="log"))
    pred = res.predict(model, x[va])
    assert np.all(pred > 0) and res.target_transform == "log"
    assert res.y_mean == pytest.approx(np.mean(np.log(y[tr])))
    assert np.mean(np.abs(pred - y[va])) == pytest.approx(min(h["val_mae"] for h in res.history), rel=1e-4)
    assert min(h["val_mae"] for h in res.history) < 0.3 * np.mean(np.abs(y[va] - np.median(y[tr])))
    with pytest.raises(ValueError, match="positive training targets"):
        fit(model, x[tr], y[tr] - 100.0, x[va], y[va], FitConfig(max_epochs=1, batch_size=64, target_transform="log"))
    with pytest.raises(ValueError, match="target_transform 'sqrt'"):
        fit(model, x[tr], y[tr], x[va], y[va], FitConfig(max_epochs=1, batch_size=64, target_transform="sqrt"))


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_element_attention_slots_and_overflow():
    """Token slots beyond a row's elements are masked: the same weights give the same prediction with
    4 or 8 slots; a row with more elements than slots gives NaN, never a silently truncated formula."""
    x = element_fractions(["NaCl", "Fe2O3", "LiFePO4", "BaTiO3", "CaMgSiAlO"])
    table = np.random.default_rng(0).normal(size=(86, 5))
    wide = ElementAttention(dim=16, heads=2, n_layers=2, max_elements=8, element_table=table)
    variables = wide.init(jax.random.PRNGKey(0), x)
    out8 = np.asarray(wide.apply(variables, x))
    with jax.debug_nans(False):  # the NaN below is the intended answer
        out4 = np.asarray(wide.clone(max_elements=4).apply(variables, x))
    np.testing.assert_allclose(out4[:4], out8[:4], rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(out8)) and np.isnan(out4[4])  # CaMgSiAlO has 5 elements
    assert len(set(np.round(out8, 6))) == 5  # different compositions, different predictions


@pytest.mark.slow  # ~30 s of training: outside the 15-min default suite, as BRNet's learning test
def test_element_attention_learns_real_bulk_moduli():
    """Raw fractions reach the attention model unstandardised (``raw_columns``), the standardised
    descriptor columns after them; it learns real bulk moduli well beyond the mean predictor."""
    formulas, y = _real_rows()
    x = featurize(formulas, "fractions+magpie", TABLE)
    tr, va = slice(0, 1200), slice(1200, None)
    model = ElementAttention(dim=32, heads=4, n_layers=2, max_elements=8, use_descriptors=True)
    res = fit(model, x[tr], y[tr], x[va], y[va], FitConfig(max_epochs=25, batch_size=64, seed=0, raw_columns=86))
    assert np.all(res.x_mean[:86] == 0) and np.all(res.x_std[:86] == 1) and np.all(np.isinf(res.x_low[:86]))
    assert res.x_std[86:].std() > 0  # the descriptors are still standardised
    baseline = np.mean(np.abs(y[va] - y[tr].mean()))
    assert min(h["val_mae"] for h in res.history) < 0.6 * baseline, (res.history[-1], baseline)
    pred = res.predict(model, x[va])
    assert np.mean(np.abs(pred - y[va])) == pytest.approx(min(h["val_mae"] for h in res.history), rel=1e-4)
