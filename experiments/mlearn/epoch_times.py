"""Measured one-core epoch times of a protocol's setups: what their epoch horizons are planned from.

    python experiments/mlearn/epoch_times.py [--protocol FILE] [--minutes 6] [--only finetune/Si ...] [--root DIR]

A protocol's cosine schedule spans a number of epochs per setup and element (``epochs``); it should
be about what fits in the cap (``cap_minutes`` of one core), or runs either hit the cap with the
learning rate still high or end their schedule with minutes to spare. This trains each (setup,
element) of the protocol on seed 0's training part with its real config (its planned epochs set the
padding budgets, so the step is the real one) until a cap of ``--minutes``, two runs side by side on
one core each (the conditions of the real runs, ``experiments/_protocol.py``; with an odd number of
runs the last one runs alone), names no test file, then prints per run the median wall time of its
epochs after the first (which compiles) and the horizon it gives: the epochs that fit in the cap
after the first epoch's overhead. A two-stage setup is timed by its stage one (its stage two runs the
same step). Validation is part of each epoch, as in the real runs. The timing runs and their record
(``timing_record.json``) go to ``--root``, by default a temporary folder removed afterwards.
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


def epoch_seconds(metrics_csv: Path) -> tuple[float, float, int]:
    """(median wall time of a run's epochs after its first, s; the first epoch's extra time over that
    median: start-up and compilation, s; how many epochs were timed) from its metrics.csv. ``wall_s``
    is the wall time since the training process started, at the end of each epoch; it restarts when
    a run is resumed, so the epoch after each restart (which compiles again) is left out too."""
    lines = metrics_csv.read_text().splitlines()
    col = lines[0].split(",").index("wall_s")
    wall = [float(line.split(",")[col]) for line in lines[1:]]
    steps = [b - a for a, b in zip(wall, wall[1:]) if b > a]  # a drop is a restart: its epoch is not a step here
    if not steps:
        raise ValueError(f"{metrics_csv}: {len(wall)} epoch(s); the timing needs at least 2 in one call "
                         "(the first compiles)")
    median = statistics.median(steps)
    return median, wall[0] - median, len(steps)


def timing_runs(spec: dict, root: Path, minutes: float) -> list[Run]:
    """One run per (setup, element): seed 0's config (stage one for a two-stage setup), its planned
    epochs kept, no early stopping, no test file, a cap of ``minutes``."""
    first, _ = plan({**spec, "seeds": [0]}, root)
    return [Run(key, merge(r.config, {"optim": {"early_stopping_patience": 0}}), None, root / key.replace("/", "_"),
                minutes) for r in first for key in [r.key.removesuffix("/stage1").removesuffix("/0")]]


def horizon(cap_minutes: float, seconds: float, overhead: float) -> int:
    """The epochs that fit in ``cap_minutes`` at ``seconds`` per epoch after ``overhead`` seconds."""
    return int((cap_minutes * 60 - overhead) // seconds)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", type=Path, default=HERE / "protocol.json")
    p.add_argument("--minutes", type=float, default=6.0, help="one-core minutes per timing run (at least 2 epochs)")
    p.add_argument("--only", nargs="*", default=None, help="setup or setup/element prefixes")
    p.add_argument("--lanes", type=int, default=2)
    p.add_argument("--root", type=Path, default=None, help="where the timing runs go (default: a temporary folder)")
    args = p.parse_args(argv)
    spec = json.loads(args.protocol.read_text())
    spec["data"] = str((args.protocol.parent / spec["data"]).resolve())  # relative to the protocol file
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        runs = [r for r in timing_runs(spec, root, args.minutes)
                if not args.only or any(r.key.startswith(o) for o in args.only)]
        done, failed, unfinished = run_all(runs, root / "timing_record.json", lanes=args.lanes)
        print(f"\n{args.minutes:g} one-core minutes per run, {args.lanes} side by side; median of the epochs after "
              "the first\n")
        print("| setup/element | s/epoch | epochs timed | first epoch's overhead (s) | cap (min) | horizon: epochs in "
              "the cap |\n|---|---|---|---|---|---|")
        for r in runs:
            if r.key not in done:
                continue
            setup = r.key.split("/")[0]
            cap = spec["setups"][setup].get("cap_minutes", spec.get("cap_minutes"))
            try:
                t, overhead, timed = epoch_seconds(r.workdir / "metrics.csv")
            except ValueError as e:  # one epoch in the minutes: say so, and time the others
                print(f"| {r.key} | {e}: give it more --minutes | | | | |")
                continue
            print(f"| {r.key} | {t:.1f} | {timed} | {overhead:.0f} | {cap if cap is not None else '-'} | "
                  f"{horizon(cap, t, overhead) if cap is not None else '-'} |")
        report_unfinished(failed, unfinished)


if __name__ == "__main__":
    main()
