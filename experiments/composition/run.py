"""Composition benchmark: every model x dataset x seed of config.json; table, learning curves.

    python experiments/composition/run.py [config.json] [--datasets ...] [--models ...] [--seeds 0 1]
        [--max-epochs N] [--max-rows N] [--out DIR]

Datasets are CrabNet-benchmark ``formula,target`` CSVs with train/val/test splits (OQMD-style
folders with only val/test get a seeded 80/10/10 split of their union). Rows whose formula holds
an element outside the 86-element ElemNet vector are dropped and counted. Features are cached in
``<out>/cache``. Finished (dataset, model, seed) results in ``<out>/results.json`` are reused.
Writes ``results.md`` (test MAE mean +- std over seeds, parameters, training time) and
``curves_<dataset>.png`` (validation MAE per epoch, seed 0).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from jaxmat.arrays import FitConfig, fit, ridge_fit
from jaxmat.composition import FormulaError, element_fractions, featurize, make_regressor
from jaxmat.composition._models import match_budget

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


def features(name, splits, cfg, root, cache: Path, max_rows=None):
    """Featurised splits; rows with an element outside the input vector are dropped (counted)."""
    cache.mkdir(parents=True, exist_ok=True)
    file = cache / f"{name}_{cfg['features'].replace('+', '_')}{'_' + str(max_rows) if max_rows else ''}.npz"
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


def run_model(spec, data, budget, fit_cfg, seed):
    (xt, yt), (xv, yv), (xs, ys) = data["train"], data["val"], data["test"]
    t0 = time.perf_counter()
    if spec["arch"] == "ridge":
        predict, alpha, n_params = ridge_fit(xt, yt, xv, yv)
        return {"test_mae": float(np.mean(np.abs(predict(xs) - ys))), "params": n_params,
                "train_s": time.perf_counter() - t0, "epochs": 0, "curve": [], "alpha": alpha}
    kwargs = {k: v for k, v in spec.items() if k != "arch"}
    kwargs, n_params = match_budget(spec["arch"], xt.shape[1], budget, **kwargs)
    model = make_regressor(spec["arch"], **kwargs)
    res = fit(model, xt, yt, xv, yv, FitConfig(**{**fit_cfg, "seed": seed}))
    return {"test_mae": float(np.mean(np.abs(res.predict(model, xs) - ys))), "params": n_params,
            "train_s": res.train_seconds, "epochs": len(res.history), "best_epoch": res.best_epoch,
            "curve": [h["val_mae"] for h in res.history], "widths": list(kwargs["widths"])}


def write_outputs(results, cfg, out: Path):
    from jaxmat.train._plots import _plt

    lines = [f"Parameter budget {cfg['param_budget']:,}; features {cfg['features']}; fit {json.dumps(cfg['fit'])}", "",
             "| dataset | model | test MAE (mean +- std) | seeds | params | train time (s) | epochs |", "|---|---|---|---|---|---|---|"]
    plt = _plt()
    for ds, spec in cfg["datasets"].items():
        entries = {m: [results[k] for k in results if k.startswith(f"{ds}|{m}|")] for m in cfg["models"]}
        if not any(entries.values()):
            continue
        for m, rs in entries.items():
            if not rs:
                continue
            maes = np.array([r["test_mae"] for r in rs])
            lines.append(f"| {ds} | {m} | {maes.mean():.4g} +- {maes.std():.2g} {spec['unit']} | {len(rs)} | "
                         f"{rs[0]['params']:,} | {np.mean([r['train_s'] for r in rs]):.0f} | "
                         f"{np.mean([r['epochs'] for r in rs]):.0f} |")
        for name, v in spec.get("published", {}).items():
            lines.append(f"| {ds} | {name} (published) | {v} {spec['unit']} | | | | |")
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for m, rs in entries.items():
            seed0 = [r for r in rs if r.get("seed") == 0 and r["curve"]]
            if seed0:
                ax.plot(np.arange(1, len(seed0[0]["curve"]) + 1), seed0[0]["curve"], label=m)
        ax.set(xlabel="epoch", ylabel=f"validation MAE ({spec['unit']})", title=ds, yscale="log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"curves_{ds}.png", dpi=110)
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
    for ds in cfg["datasets"]:
        if args.datasets and ds not in args.datasets:
            continue
        if not (root / ds).is_dir():
            print(f"skipping {ds}: {root / ds} not found")
            continue
        data, dropped = features(ds, load_splits(root / ds), cfg, root, out / "cache", args.max_rows)
        print(f"== {ds}: " + ", ".join(f"{s} {len(v[1])}" for s, v in data.items()) + f"; dropped {dropped}", flush=True)
        for m, spec in cfg["models"].items():
            if args.models and m not in args.models:
                continue
            for seed in (args.seeds if args.seeds is not None else cfg["seeds"]):
                key = f"{ds}|{m}|{seed}"
                if key in results:
                    continue
                r = run_model(spec, data, cfg["param_budget"], fit_cfg, seed)
                results[key] = {**r, "seed": seed, "dropped": dropped}
                print(f"   {m:16s} seed {seed}: test MAE {r['test_mae']:.4g}, {r['params']:,} params, "
                      f"{r['train_s']:.0f} s, {r['epochs']} epochs", flush=True)
                res_file.write_text(json.dumps(results, indent=1) + "\n")
    write_outputs(results, cfg, out)


if __name__ == "__main__":
    main()
