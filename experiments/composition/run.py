"""Composition benchmark: every model x dataset x seed of config.json; table, learning curves.

    python experiments/composition/run.py [config.json] [--datasets ...] [--models ...] [--seeds 0 1]
        [--max-epochs N] [--max-rows N] [--out DIR]

Datasets are CrabNet-benchmark ``formula,target`` CSVs with train/val/test splits (OQMD-style
folders with only val/test get a seeded 80/10/10 split of their union; a dataset with ``"folds": k``
reads matbench-style ``train{i}/val{i}/test{i}.csv`` and runs each fold once, seed 0).
Dropout, AdamW weight decay and the target transform ("none" or "log") are hyperparameters searched
over ``dropout_grid``, ``weight_decay_grid`` and ``target_transform_grid`` (each config-wide, per
dataset, or per model; the most specific wins; all combinations are tried): for each dataset and
network the table reports the combination with the lowest mean VALIDATION MAE. Rows whose formula
holds an element outside the 86-element ElemNet vector are dropped and counted. An ``attention``
model (``ElementAttention``) reads the 86 fractions at the start of the features unstandardised,
takes its fixed element embedding from ``element_embedding`` (a table under the data root) and gets
as many token slots as the dataset's largest formula has elements. A model's ``fit`` entry
overrides the fit settings for that model. Features are cached
in ``<out>/cache``. Finished (dataset, model, run, settings) results in ``<out>/results.json`` are
reused.
Writes ``results.md`` (test MAE mean +- std over seeds, parameters, training time) and
``curves_<dataset>.png`` (validation MAE per epoch of the first run, at the chosen settings).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import time
from pathlib import Path

import numpy as np

from jaxmat.arrays import FitConfig, fit, ridge_fit
from jaxmat.composition import (ELEMNET_ELEMENTS, FormulaError, element_embedding_table, element_fractions,
                                featurize, make_regressor, match_budget)

HERE = Path(__file__).resolve().parent


def read_csv(path):
    rows = list(csv.reader(open(path)))
    if not rows or rows[0][:2] != ["formula", "target"]:
        raise ValueError(f"{path}: expected a 'formula,target' header")
    return [r[0] for r in rows[1:]], np.array([float(r[1]) for r in rows[1:]])


def load_splits(folder: Path, seed: int = 0) -> dict:
    if (folder / "train.csv").is_file():
        return {s: read_csv(folder / f"{s}.csv") for s in ("train", "val", "test")}
    formulas, y = [], []
    for s in ("val", "test"):
        f, t = read_csv(folder / f"{s}.csv")
        formulas += f
        y.append(t)
    y = np.concatenate(y)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_val = n_test = len(y) // 10
    parts = {"test": perm[:n_test], "val": perm[n_test : n_test + n_val], "train": perm[n_test + n_val :]}
    return {s: ([formulas[i] for i in idx], y[idx]) for s, idx in parts.items()}


def dataset_runs(folder: Path, spec: dict, seeds) -> list[tuple[str, int, dict | None]]:
    """[(run id, seed, splits or None = the dataset's own split)]: one per seed, or one per fold."""
    if spec.get("folds"):
        return [(f"fold{k}", 0, {s: read_csv(folder / f"{s}{k}.csv") for s in ("train", "val", "test")})
                for k in range(spec["folds"])]
    return [(f"seed{seed}", seed, None) for seed in spec.get("seeds", seeds)]


def features(name, splits, cfg, root, cache: Path, max_rows=None):
    """Featurised splits; rows with an element outside the input vector are dropped (counted)."""
    cache.mkdir(parents=True, exist_ok=True)
    file = cache / f"{name.replace('/', '_')}_{cfg['features'].replace('+', '_')}{'_' + str(max_rows) if max_rows else ''}.npz"
    if file.is_file():
        z = np.load(file)
        return {s: (z[f"x_{s}"], z[f"y_{s}"]) for s in ("train", "val", "test")}, json.loads(str(z["dropped"]))
    out, dropped = {}, {}
    for s, (formulas, y) in splits.items():
        formulas, y = formulas[:max_rows], y[:max_rows]
        keep = []
        for k, f in enumerate(formulas):
            try:
                element_fractions([f])  # raises for malformed formulas and elements outside the 86
                keep.append(k)
            except FormulaError:
                pass
        dropped[s] = len(formulas) - len(keep)
        x = featurize([formulas[k] for k in keep], cfg["features"], root / cfg["element_table"])
        out[s] = (x, y[keep].astype(np.float64))
    np.savez(file, dropped=json.dumps(dropped), **{f"x_{s}": v[0] for s, v in out.items()},
             **{f"y_{s}": v[1] for s, v in out.items()})
    return out, dropped


def run_model(spec, data, budget, fit_cfg, seed, dropout=0.0, element_table=None):
    """Train and test one model on one split; ``fit_cfg`` holds FitConfig fields."""
    (xt, yt), (xv, yv), (xs, ys) = data["train"], data["val"], data["test"]
    t0 = time.perf_counter()
    if spec["arch"] == "ridge":
        predict, alpha, n_params = ridge_fit(xt, yt, xv, yv, clip_inputs=FitConfig(**fit_cfg).clip_inputs)
        return {"test_mae": float(np.mean(np.abs(predict(xs) - ys))), "val_mae": float(np.mean(np.abs(predict(xv) - yv))),
                "params": n_params, "train_s": time.perf_counter() - t0, "epochs": 0, "curve": [], "alpha": alpha}
    kwargs = {k: v for k, v in spec.items() if k not in ("arch", "fit", *GRIDS)}  # network hyperparameters
    kwargs.update({"dropout": dropout} if dropout else {})
    if spec["arch"] == "attention":  # raw fractions first; one token slot per element of the largest formula
        n_el = len(ELEMNET_ELEMENTS)
        slots = max(int((x[:, :n_el] > 0).sum(1).max()) for x in (xt, xv, xs))
        kwargs.update(max_elements=slots, element_table=element_table)
        fit_cfg = {**fit_cfg, "raw_columns": n_el}
    kwargs, n_params = match_budget(spec["arch"], xt.shape[1], budget, **kwargs)
    model = make_regressor(spec["arch"], **kwargs)
    res = fit(model, xt, yt, xv, yv, FitConfig(**{**fit_cfg, "seed": seed}))
    return {"test_mae": float(np.mean(np.abs(res.predict(model, xs) - ys))), "val_mae": min(h["val_mae"] for h in res.history),
            "params": n_params, "train_s": res.train_seconds, "epochs": len(res.history), "best_epoch": res.best_epoch,
            "curve": [h["val_mae"] for h in res.history],
            **({"dim": kwargs["dim"]} if "dim" in kwargs else {"widths": list(kwargs["widths"])})}


#: searched hyperparameters: grid name -> (result field, value when not searched)
GRIDS = {"dropout_grid": ("dropout", 0.0), "weight_decay_grid": ("weight_decay", 0.0),
         "target_transform_grid": ("target_transform", "none")}


def grid(name, cfg, ds, m) -> list:
    """The values of ``name`` (a key of GRIDS) to try for dataset ``ds`` and model ``m``: the
    model's own grid, else the dataset's, else the config's, else the fit setting alone."""
    field, default = GRIDS[name]
    if cfg["models"][m]["arch"] == "ridge":
        return [default]
    fallback = [{**cfg["fit"], **cfg["datasets"][ds].get("fit", {})}.get(field, default)]  # (dropout is never a fit field)
    return cfg["models"][m].get(name, cfg["datasets"][ds].get(name, cfg.get(name, fallback)))


def settings_of(r) -> tuple:
    """(dropout, weight decay, target transform) of a result (older results lack the later fields)."""
    return tuple(r.get(field, default) for field, default in GRIDS.values())


def run_key(ds, m, run_id, rate, wd, transform="none") -> str:
    return f"{ds}|{m}|{run_id}|dropout={rate}" + (f"|wd={wd}" if wd else "") + (f"|{transform}" if transform != "none" else "")


def label(rate, wd, transform="none") -> str:
    return f"{rate}" + (f", wd {wd}" if wd else "") + (f", {transform} target" if transform != "none" else "")


def select(results, ds, m, n_runs):
    """Runs of (dataset, model) at the settings (dropout, weight decay, target transform) with the
    lowest mean validation MAE, among those with all ``n_runs`` runs finished. Returns (settings,
    runs) or (None, [])."""
    by_rate = {}
    for k, r in results.items():
        if k.startswith(f"{ds}|{m}|"):
            by_rate.setdefault(settings_of(r), []).append(r)
    full = {d: rs for d, rs in by_rate.items() if len(rs) >= n_runs}
    if not full:
        return None, []
    best = min(full, key=lambda d: np.mean([r["val_mae"] for r in full[d]]))
    return best, sorted(full[best], key=lambda r: r["run"])


def write_outputs(results, cfg, out: Path, n_runs: dict):
    from jaxmat.train._plots import _plt

    own = {g: {**{ds: s[g] for ds, s in cfg["datasets"].items() if g in s},
               **{m: s[g] for m, s in cfg["models"].items() if g in s}} for g in GRIDS}
    own = {g: v for g, v in own.items() if v}
    searched = [g for g in GRIDS if g == "dropout_grid" or cfg.get(g) or own.get(g)]
    names = ", ".join(GRIDS[g][0].replace("_", " ") for g in searched)
    lines = [f"Parameter budget {cfg['param_budget']:,}; features {cfg['features']}; fit {json.dumps(cfg['fit'])}; "
             f"{names} chosen per dataset and model on the mean validation MAE from the config-wide grid "
             + " x ".join(str(cfg.get(g, [GRIDS[g][1]])) for g in searched)
             + (f"; own grids (a model's wins over a dataset's) {json.dumps(own)}" if own else ""), ""] + (
             [cfg["notes"], ""] if cfg.get("notes") else []) + [
             f"* {ds}: fit overrides {json.dumps(spec['fit'])}" for ds, spec in cfg["datasets"].items() if spec.get("fit")] + [
             f"* {m}: fit overrides {json.dumps(spec['fit'])}" for m, spec in cfg["models"].items() if spec.get("fit")] + ["",
             f"| dataset | model | test MAE (mean +- std) | runs | {names} | params | "
             "train time (s) | epochs |",
             "|---|---|---|---|---|---|---|---|"]
    plt = _plt()
    for ds, spec in cfg["datasets"].items():
        chosen = {m: select(results, ds, m, n_runs.get(ds, 1)) for m in cfg["models"]}
        if not any(rs for _, rs in chosen.values()):
            continue
        for m, (rate, rs) in chosen.items():
            if not rs:
                continue
            maes = np.array([r["test_mae"] for r in rs])
            lines.append(f"| {ds} | {m} | {maes.mean():.4g} +- {maes.std():.2g} {spec['unit']} | {len(rs)} | "
                         f"{'-' if cfg['models'][m]['arch'] == 'ridge' else label(*rate)} | {rs[0]['params']:,} | "
                         f"{np.mean([r['train_s'] for r in rs]):.0f} | {np.mean([r['epochs'] for r in rs]):.0f} |")
        for name, v in spec.get("published", {}).items():
            lines.append(f"| {ds} | {name} (published) | {v} {spec['unit']} | | | | | |")
        fig, ax = plt.subplots(figsize=(5.5, 4))
        first_run = next(rs[0]["run"] for _, rs in chosen.values() if rs)
        for m, (rate, rs) in chosen.items():
            if rs and rs[0]["curve"]:
                ax.plot(np.arange(1, len(rs[0]["curve"]) + 1), rs[0]["curve"], label=f"{m} (dropout {label(*rate)})")
        ax.set(xlabel="epoch", ylabel=f"validation MAE ({spec['unit']})", title=f"{ds} ({first_run})", yscale="log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"curves_{ds.replace('/', '_')}.png", dpi=110)
        plt.close(fig)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=str(HERE / "config.json"))
    p.add_argument("--datasets", nargs="*")
    p.add_argument("--models", nargs="*")
    p.add_argument("--seeds", nargs="*", type=int)
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--max-rows", type=int, default=None, help="use only the first N rows of each split (smoke tests)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    cfg_path = Path(args.config).resolve()
    cfg = json.loads(cfg_path.read_text())
    root = (cfg_path.parent / cfg["data_root"]).resolve()
    out = Path(args.out).resolve() if args.out else cfg_path.parent
    out.mkdir(parents=True, exist_ok=True)
    res_file = out / "results.json"
    results = json.loads(res_file.read_text()) if res_file.is_file() else {}
    fit_cfg = {**cfg["fit"], **({"max_epochs": args.max_epochs} if args.max_epochs else {})}
    n_runs = {}
    wanted = [m for m in cfg["models"] if not args.models or m in args.models]
    if any(cfg["models"][m]["arch"] == "attention" for m in wanted):
        if not cfg["features"].startswith("fractions"):
            raise ValueError("attention models need features that start with the element fractions")
        table = element_embedding_table(root / cfg["element_embedding"])
    for ds, spec in cfg["datasets"].items():
        if not (root / ds).is_dir():
            print(f"skipping {ds}: {root / ds} not found")
            continue
        runs = dataset_runs(root / ds, spec, args.seeds if args.seeds is not None else cfg["seeds"])
        n_runs[ds] = len(runs)
        if args.datasets and ds not in args.datasets:
            continue
        shared = None  # seeded runs share the dataset's one split: read and featurise it once
        for run_id, seed, splits in runs:
            if splits is not None:
                data, dropped = features(f"{ds}_{run_id}", splits, cfg, root, out / "cache", args.max_rows)
            else:
                shared = shared or features(ds, load_splits(root / ds), cfg, root, out / "cache", args.max_rows)
                data, dropped = shared
            print(f"== {ds} {run_id}: " + ", ".join(f"{s} {len(v[1])}" for s, v in data.items()) + f"; dropped {dropped}",
                  flush=True)
            for m, mspec in cfg["models"].items():
                if args.models and m not in args.models:
                    continue
                combos = itertools.product(*(grid(g, cfg, ds, m) for g in GRIDS))
                for rate, wd, transform in combos:
                    key = run_key(ds, m, run_id, rate, wd, transform)
                    if key in results:
                        continue
                    # (ridge: weight decay 0 and no transform, always)
                    fit_run = {**fit_cfg, **spec.get("fit", {}), **mspec.get("fit", {}), "weight_decay": wd,
                               "target_transform": transform}
                    r = run_model(mspec, data, cfg["param_budget"], fit_run, seed, rate,
                                  table if mspec["arch"] == "attention" else None)
                    results[key] = {**r, "run": run_id, "seed": seed, "dropout": rate, "weight_decay": wd,
                                    "target_transform": transform, "dropped": dropped}
                    print(f"   {m:16s} {run_id} dropout {label(rate, wd, transform)}: test MAE {r['test_mae']:.4g} (val {r['val_mae']:.4g}), "
                          f"{r['params']:,} params, {r['train_s']:.0f} s, {r['epochs']} epochs", flush=True)
                    res_file.write_text(json.dumps(results, indent=1) + "\n")
    write_outputs(results, cfg, out, n_runs)


if __name__ == "__main__":
    main()
