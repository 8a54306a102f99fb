"""M3GNet ablations on mlearn Si and Mo under the mlearn protocol: 3 seeds, mean ± std, test once.

    python experiments/ablations/run.py [ablations.json] [--lanes 2] [--minutes M] [--only "1 block" ...]

The ablation file is data: ``data`` (file pattern), ``seeds``, ``epochs`` per element, ``base`` (a
training config) and ``variants`` (name -> partial config merged into ``base``). Runs every (seed,
element, variant) that runs.json does not hold yet, seed by seed (so a partial sweep compares every
variant on the first seeds), two at a time, each on one core (experiments/_protocol.py); then writes
results.md (table) and ablation.png (test MAE, mean ± std over seeds, as error bars) beside the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _protocol import Run, check_record, fmt, load_record, merge, report_unfinished, run_all  # noqa: E402


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def plan(spec: dict, spec_dir: Path, root: Path) -> list[Run]:
    runs = []
    for seed in spec["seeds"]:
        for el, epochs in spec["epochs"].items():
            files = {s: str((spec_dir / spec["data"].format(element=el, split=s)).resolve()) for s in ("train", "test")}
            for var, over in spec["variants"].items():
                cfg = merge(merge(spec["base"], over), {"data": {"train": files["train"]}, "optim": {"epochs": epochs},
                                                        "run": {"seed": seed}})
                runs.append(Run(f"{var}/{el}/{seed}", cfg, files["test"], root / "runs" / f"{slug(var)}_{el}_{seed}"))
    return runs


def rows_of(spec, record, var, el):
    return [record[f"{var}/{el}/{s}"] for s in spec["seeds"] if f"{var}/{el}/{s}" in record]


TAIL = 5  # epochs over which the end of a learning curve is measured
FLAT = 2.0  # a median fall (%) over those epochs below this counts as flattened


def tail_gain(r: dict) -> float:
    """Relative fall (%) of the validation force MAE over a run's last TAIL epochs: ~0 when the curve is flat."""
    y = r["curve"]["val_f_mae"]
    return 100.0 * (y[-TAIL - 1] - y[-1]) / y[-TAIL - 1] if len(y) > TAIL else float("nan")


def budget_note(spec: dict, record: dict) -> str:
    """How flat the validation curves are where the fixed budget ends, from every recorded run."""
    import numpy as np

    from jaxmat.train._config import OptimConfig

    final = spec["base"].get("optim", {}).get("final_lr_factor", OptimConfig.final_lr_factor)
    gains = {k: g for k, r in record.items() if np.isfinite(g := tail_gain(r))}
    if not gains:
        return f"Budget: no run is longer than {TAIL} epochs, so how flat the curves end is not measured."
    by_var: dict[str, list[float]] = {}
    for k, g in gains.items():
        by_var.setdefault(k.split("/")[0], []).append(g)
    steepest = sorted(by_var, key=lambda v: -np.mean(by_var[v]))[:3]
    early = sum(r["ended"] != "epochs" for r in record.values())
    median = float(np.median(list(gains.values())))
    verdict = ("the curves (`curves.png`) have flattened, so the table compares variants near the end of their "
               "schedules, not mid-descent" if median < FLAT else
               "the curves (`curves.png`) were still falling, so the table compares variants at this budget only")
    return (f"Budget: every variant gets the same epochs (the cosine horizon: the learning rate ends at "
            f"{100 * final:g} % of its peak); {early} of {len(record)} runs stopped early. Over the last {TAIL} "
            f"epochs the validation force MAE fell by a median {median:.1f} % (largest {max(gains.values()):.1f} %): "
            f"{verdict}. Still falling most (mean over runs): "
            + ", ".join(f"{v} ({np.mean(by_var[v]):.1f} %)" for v in steepest)
            + "; a longer budget is the next lever, and it would favour those.")


def write_outputs(spec: dict, record: dict, out: Path) -> str:
    import numpy as np

    from matplotlib.patches import Patch

    from jaxmat.train._plots import _plt

    lines = ["| element | variant | params | test E MAE (meV/atom) | test F MAE (eV/A) | seeds | epochs: run (best) | "
             f"val F fall, last {TAIL} ep. (%) | one-core min/run |", "|---|---|---|---|---|---|---|---|---|"]
    for el in spec["epochs"]:
        for var in spec["variants"]:
            rows = rows_of(spec, record, var, el)
            if not rows:
                lines.append(f"| {el} | {var} | | not run yet | | 0 | | | |")
                continue
            epochs = ", ".join(f"{r['epochs']} ({r['best_epoch']})" for r in rows)
            n = f"{len(rows)}" + ("" if len(rows) == len(spec["seeds"]) else " (incomplete)")
            lines.append(f"| {el} | {var} | {rows[0]['params']:,} | {fmt([r['test']['e_mae'] for r in rows], 2)} | "
                         f"{fmt([r['test']['f_mae'] for r in rows], 4)} | {n} | {epochs} | "
                         f"{fmt([g for r in rows if np.isfinite(g := tail_gain(r))], 1)} | "
                         f"{fmt([r['minutes'] for r in rows], 1)} |")
    text = "\n".join(["# M3GNet ablations on mlearn Si and Mo", "",
                      "Reproduce: `python experiments/ablations/run.py` (resumable; skips the runs in runs.json).", "",
                      "## Protocol", "", spec["description"], "", "Base config (variants change one part of it):", "",
                      "```json", json.dumps(spec["base"], indent=1), "```", "", "## Results", "",
                      "Mean ± sample std over the seeds; force MAE over all force components. Plot: `ablation.png` "
                      "(error bars: std over seeds); `curves.png`: validation force MAE per epoch of every run.", "",
                      *lines, "", budget_note(spec, record), ""])
    (out / "results.md").write_text(text)

    plt = _plt()
    variants, elements = list(spec["variants"]), list(spec["epochs"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(elements)
    for k, el in enumerate(elements):
        x = np.arange(len(variants)) + (k - (len(elements) - 1) / 2) * width
        for ax, key in zip(axes, ("e_mae", "f_mae")):
            vals = [[r["test"][key] for r in rows_of(spec, record, v, el)] for v in variants]
            mean = [np.mean(v) if v else np.nan for v in vals]
            std = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals]
            bars = ax.bar(x, mean, width, yerr=std, capsize=3, color=f"C{k}")
            for bar, v in zip(bars, vals):
                if len(v) < len(spec["seeds"]):  # incomplete: hatched and pale, so no ranking is read from it
                    bar.set_hatch("//")
                    bar.set_alpha(0.45)
    for ax, label in zip(axes, ("test energy MAE (meV/atom)", "test force MAE (eV/A)")):
        ax.set_xticks(np.arange(len(variants)), variants, rotation=35, ha="right")
        ax.set_ylabel(label)
        ax.legend(handles=[Patch(color=f"C{k}", label=el) for k, el in enumerate(elements)])
    partial = any(len(rows_of(spec, record, v, el)) < len(spec["seeds"]) for v in variants for el in elements)
    fig.suptitle(f"mean ± std over {len(spec['seeds'])} seeds" + ("; hatched, pale bars: fewer seeds so far" if partial else ""),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(elements), figsize=(6 * len(elements), 4), squeeze=False)
    for ax, el in zip(axes[0], elements):
        for k, var in enumerate(variants):
            for j, r in enumerate(rows_of(spec, record, var, el)):
                y = r["curve"]["val_f_mae"]
                ax.plot(range(1, len(y) + 1), y, color=f"C{k % 10}", ls="-" if k < 10 else "--",
                        label=var if j == 0 else None)
        ax.set(title=el, xlabel="epoch", ylabel="validation force MAE (eV/A)", yscale="log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", nargs="?", type=Path, default=HERE / "ablations.json")
    p.add_argument("--lanes", type=int, default=2, help="runs side by side, one core each")
    p.add_argument("--minutes", type=float, default=None, help="wall-time cap per run and call (resumable)")
    p.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    p.add_argument("--elements", nargs="*", default=None, help="elements to run (default: all)")
    args = p.parse_args(argv)
    spec_path = args.spec.resolve()
    spec = json.loads(spec_path.read_text())
    root = spec_path.parent
    runs = plan(spec, spec_path.parent, root)
    # the whole plan, not only the selected runs: the outputs tabulate every variant of the record
    check_record(runs, load_record(root / "runs.json"), root / "runs.json")
    runs = [r for r in runs
            if (not args.only or r.key.split("/")[0] in args.only) and (not args.elements or r.key.split("/")[1] in args.elements)]
    _, failed, unfinished = run_all(runs, root / "runs.json", lanes=args.lanes, minutes=args.minutes)
    print(write_outputs(spec, load_record(root / "runs.json"), root))
    report_unfinished(failed, unfinished)


if __name__ == "__main__":
    main()
