"""Measured one-core epoch times of a protocol's setups: what their epoch horizons are planned from.

    python experiments/mlearn/epoch_times.py [--protocol FILE] [--epochs 4] [--only finetune/Si ...] [--root DIR]

A protocol's cosine schedule spans a number of epochs per setup and element (``epochs``); it should
be about what fits in the cap (``cap_minutes`` of one core), or runs either hit the cap with the
learning rate still high or end their schedule with minutes to spare. This trains each (setup,
element) of the protocol on seed 0's training part for ``--epochs`` epochs, two runs side by side
on one core each (the conditions of the real runs, ``experiments/_protocol.py``), names no test
file and records nothing, then prints per run the median wall time of its epochs after the first
(which compiles) and the horizon it gives: the cap over that time. A two-stage setup is timed by its
stage one (its stage two runs the same step). Validation is part of each epoch, as in the real runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from _protocol import Run, merge, report_unfinished, run_all  # noqa: E402
from run import plan  # noqa: E402


def epoch_seconds(metrics_csv: Path) -> float:
    """The median wall time (s) of a run's epochs after its first, from its metrics.csv (``wall_s`` is
    the run's cumulative wall time at the end of each epoch)."""
    lines = metrics_csv.read_text().splitlines()
    col = lines[0].split(",").index("wall_s")
    wall = [float(line.split(",")[col]) for line in lines[1:]]
    if len(wall) < 2:
        raise ValueError(f"{metrics_csv}: {len(wall)} epoch(s); the timing needs at least 2 (the first compiles)")
    return statistics.median(b - a for a, b in zip(wall, wall[1:]))


def timing_runs(spec: dict, root: Path, epochs: int) -> list[Run]:
    """One run per (setup, element): seed 0's config (stage one for a two-stage setup) for ``epochs``
    epochs, no early stopping, no test file, no cap."""
    first, _ = plan({**spec, "seeds": [0]}, root)
    runs = []
    for r in first:
        key = r.key.removesuffix("/stage1").removesuffix("/0")
        cfg = merge(r.config, {"optim": {"epochs": epochs, "early_stopping_patience": epochs + 1}})
        runs.append(Run(key, cfg, None, root / key.replace("/", "_"), None))
    return runs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", type=Path, default=HERE / "protocol.json")
    p.add_argument("--epochs", type=int, default=4, help="epochs per timing run (the first compiles)")
    p.add_argument("--only", nargs="*", default=None, help="setup or setup/element prefixes")
    p.add_argument("--lanes", type=int, default=2)
    p.add_argument("--root", type=Path, default=None, help="where the timing runs go (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the first epoch compiles and is not timed")
    spec = json.loads(args.protocol.read_text())
    spec["data"] = str((args.protocol.parent / spec["data"]).resolve())  # relative to the protocol file
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        runs = [r for r in timing_runs(spec, root, args.epochs) if not args.only or any(r.key.startswith(o) for o in args.only)]
        done, failed, unfinished = run_all(runs, root / "timing_record.json", lanes=args.lanes)
        print(f"\n{args.epochs} epochs per run, {args.lanes} side by side; median of epochs 2-{args.epochs}\n")
        print("| setup/element | s/epoch | cap (min) | horizon: epochs in the cap |\n|---|---|---|---|")
        for r in runs:
            if r.key not in done:
                continue
            setup = r.key.split("/")[0]
            cap = spec["setups"][setup].get("cap_minutes", spec.get("cap_minutes"))
            t = epoch_seconds(r.workdir / "metrics.csv")
            print(f"| {r.key} | {t:.1f} | {cap if cap is not None else '-'} | "
                  f"{int(cap * 60 // t) if cap is not None else '-'} |")
        report_unfinished(failed, unfinished)


if __name__ == "__main__":
    main()
