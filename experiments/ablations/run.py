"""Ablations: train every variant of an ablation file on every dataset at the same budget.

    python experiments/ablations/run.py [ablations.json] [--only VARIANT ...] [--datasets Si ...]
        [--epochs N] [--max-steps N] [--minutes M] [--out DIR]

The ablation file is data: ``datasets`` (name -> train/test files, relative to the file),
``base`` (a training config without data files) and ``variants`` (name -> partial config merged
into ``base``). A new ablation is a new file. Finished runs (``results.json``) are reused, so an
interrupted sweep continues. Writes ``results.md`` (params, test energy/force MAE, time per step)
and ``ablation.png`` into ``--out`` (default: beside the ablation file).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
from pathlib import Path

import jax
import numpy as np

HERE = Path(__file__).resolve().parent


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_one(cfg_dict: dict, workdir: Path) -> dict:
    from jaxmat.models import load_model
    from jaxmat.train import config_from_dict, train_and_evaluate

    if (workdir / "results.json").is_file() and (workdir / "summary.json").is_file():
        return json.loads((workdir / "summary.json").read_text())
    cfg = config_from_dict(cfg_dict)
    resume = (workdir / "checkpoint.msgpack").is_file()
    results = train_and_evaluate(cfg, workdir, resume=resume, log=lambda *_: None)
    rows = list(csv.DictReader(open(workdir / "metrics.csv")))
    model = load_model(workdir / "best_model")
    test = results.get("test", results.get("valid", {}))
    summary = {
        "params": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(model.params))),
        "e_mae": test.get("e_mae"), "f_mae": test.get("f_mae"),
        "epochs": int(rows[-1]["epoch"]), "steps": int(rows[-1]["step"]),
        "s_per_step": float(rows[-1]["wall_s"]) / max(int(rows[-1]["step"]), 1),
        "wall_min": float(rows[-1]["wall_s"]) / 60,
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def write_outputs(table: dict, out: Path, spec: dict) -> None:
    budget = {**spec["base"].get("optim", {}), **spec["base"].get("run", {})}
    lines = [f"Budget: {json.dumps(budget)} (test-set MAE of the best-validation weights)", "",
             "| dataset | variant | params | test E MAE (meV/atom) | test F MAE (eV/A) | s/step | wall (min) |",
             "|---|---|---|---|---|---|---|"]
    for (ds, var), s in table.items():
        lines.append(f"| {ds} | {var} | {s['params']:,} | {s['e_mae']:.2f} | {s['f_mae']:.4f} | "
                     f"{s['s_per_step']:.3f} | {s['wall_min']:.1f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    from jaxmat.train._plots import _plt

    plt = _plt()
    datasets = sorted({d for d, _ in table})
    variants = list(dict.fromkeys(v for _, v in table))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(datasets), 1)
    for k, ds in enumerate(datasets):
        x = np.arange(len(variants)) + k * width
        for ax, key in zip(axes, ("e_mae", "f_mae")):
            ax.bar(x, [table.get((ds, v), {}).get(key) or np.nan for v in variants], width, label=ds)
    for ax, label in zip(axes, ("test energy MAE (meV/atom)", "test force MAE (eV/A)")):
        ax.set_xticks(np.arange(len(variants)) + width * (len(datasets) - 1) / 2, variants, rotation=40, ha="right")
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", default=str(HERE / "ablations.json"))
    p.add_argument("--only", nargs="*", default=None, help="variants to run (default: all)")
    p.add_argument("--datasets", nargs="*", default=None, help="datasets to run (default: all)")
    p.add_argument("--epochs", type=int, default=None, help="override the epoch budget")
    p.add_argument("--max-steps", type=int, default=None, help="stop each run after this many steps (smoke tests)")
    p.add_argument("--minutes", type=float, default=None, help="wall-time cap per run")
    p.add_argument("--out", default=None, help="output folder (default: beside the ablation file)")
    args = p.parse_args(argv)
    spec_path = Path(args.spec).resolve()
    spec = json.loads(spec_path.read_text())
    out = Path(args.out).resolve() if args.out else spec_path.parent
    out.mkdir(parents=True, exist_ok=True)
    table = {}
    for ds, files in spec["datasets"].items():
        if args.datasets and ds not in args.datasets:
            continue
        data = {k: str((spec_path.parent / v).resolve()) for k, v in files.items()}
        for var, over in spec["variants"].items():
            if args.only and var not in args.only:
                continue
            cfg = merge(merge(spec["base"], over), {"data": data})
            if args.epochs:
                cfg = merge(cfg, {"optim": {"epochs": args.epochs}})
            run_over = {k: v for k, v in (("max_steps", args.max_steps), ("max_wall_minutes", args.minutes)) if v}
            cfg = merge(cfg, {"run": run_over})
            print(f"== {ds} / {var}", flush=True)
            table[(ds, var)] = run_one(cfg, out / "runs" / f"{ds}_{var}")
    write_outputs(table, out, spec)
    return table


if __name__ == "__main__":
    main()
