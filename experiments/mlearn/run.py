"""mlearn benchmark table: M3GNet fine-tuned and from scratch under one protocol, 3 seeds, test once.

    python experiments/mlearn/run.py [--lanes 2] [--minutes M] [--only finetune/Si ...] [--report]

Runs every (setup, element, seed) of protocol.json that runs.json does not hold yet (resumable:
unfinished runs continue from their checkpoints in runs/, which stay local), two at a time, each
on one core (experiments/_protocol.py). Then writes results.md (protocol, table with GAP/MTP/JARVIS
and the zero-shot row, per-group table), curves.png (validation curves of every run) and
parity/<setup>_<element>.png (test parity plots of seed 0). runs.json, the record of finished runs,
is committed. Needs ../shared/data/mlearn.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _protocol import (TAIL_FRACTION, Run, add_to_record, check_record, fmt, load_record, merge,  # noqa: E402
                       report_unfinished, tail_fall)
from _stages import run_staged, split as split_stages  # noqa: E402

GROUPS = ("AIMD-NVT", "Elastic", "Surface", "Vacancy")
# test-set MAE, energy meV/atom and force eV/A. GAP and MTP: Zuo et al., J. Phys. Chem. A 124, 731 (2020),
# as tabulated (e_table_gap/mtp, f_table_gap/mtp) in ACEpotentials.jl's examples/zuobench/error_table.jl,
# which reproduces the error table of Witt et al., J. Chem. Phys. 159, 164101 (2023) (forces to 0.01 eV/A).
# JARVIS: M3GNet trained on the same mlearn splits, JARVIS-Leaderboard (as quoted in issue 35).
PUBLISHED = {
    "GAP (Zuo et al. 2020)": {"Ni": (0.42, 0.02), "Cu": (0.46, 0.01), "Li": (0.49, 0.01), "Mo": (2.24, 0.09),
                              "Si": (2.91, 0.07)},
    "MTP (Zuo et al. 2020)": {"Ni": (0.48, 0.01), "Cu": (0.41, 0.01), "Li": (0.49, 0.01), "Mo": (2.83, 0.09),
                              "Si": (2.21, 0.06)},
    "M3GNet, JARVIS-Leaderboard": {"Cu": (10.2, 0.0177), "Si": (15.8, 0.112)},
}
#: row labels of the setups that predate a protocol's own ``label`` per setup
LABELS = {"finetune": "jaxmat M3GNet fine-tuned", "scratch": "jaxmat M3GNet from scratch"}
MTP = PUBLISHED["MTP (Zuo et al. 2020)"]
#: the bar of issue 46: test energy MAE at most MTP's, force MAE below MTP's + this (MTP's forces have two decimals)
F_SLACK = 0.005


def label(spec: dict, setup: str) -> str:
    """A setup's row label: its ``label`` in the protocol, else the one it had before labels were there."""
    return spec["setups"][setup].get("label") or LABELS[setup]


def elements(spec: dict) -> list[str]:
    """The protocol's elements, in table order (first appearance over the setups)."""
    return list(dict.fromkeys(el for s in spec["setups"].values() for el in s["epochs"]))


def data_file(spec: dict, element: str, split: str) -> str:
    return str((HERE / spec["data"].format(element=element, split=split)).resolve())


def plan(spec: dict, root: Path) -> tuple[list[Run], list[Run]]:
    """(single-stage runs and stage ones, stage twos) of the protocol, in the order they are trained
    (setup by setup). A setup with a ``stage_two`` ({"fraction": f, "over": {...}}) trains each run in
    two stages (``_stages.staged``); only the stage two, keyed like a single-stage run, is tested."""
    planned = []
    for setup, s in spec["setups"].items():
        for seed in spec["seeds"]:
            for el, epochs in s["epochs"].items():
                cfg = merge(merge(spec["base"], s["config"]), {
                    "data": {"train": data_file(spec, el, "train")},
                    "optim": {"epochs": epochs}, "run": {"seed": seed}})
                planned.append((Run(f"{setup}/{el}/{seed}", cfg, data_file(spec, el, "test"),
                                    root / "runs" / f"{setup}_{el}_{seed}", s.get("cap_minutes", spec.get("cap_minutes"))),
                                s.get("stage_two")))
    return split_stages(planned)


def stage_one(spec: dict, record: dict, setup: str, key: str) -> dict | None:
    """The recorded stage one of a two-stage setup's run ``key`` (None for a single-stage setup; a two-stage
    run recorded without its stage one is an error: its minutes and epochs would be under-reported)."""
    if not spec["setups"][setup].get("stage_two"):
        return None
    if key + "/stage1" not in record:
        raise ValueError(f"runs.json holds {key} but not its stage one {key}/stage1")
    return record[key + "/stage1"]


#: how each run ended, in the table: early stopping, the cap in one-core minutes, the schedule's last epoch
ENDED = {"early_stopping": "early stop", "cap": "cap", "epochs": "schedule end"}


def run_tail(r: dict, key: str = "val_f_mae") -> float | None:
    """The run's fall (%) of its best-so-far validation ``key`` over its last TAIL_FRACTION of epochs
    (from its summary, or computed from its curve for runs summarised before it was recorded)."""
    got = r.get("tail_fall_percent", {}).get(key)
    return got if got is not None or key not in r.get("curve", {}) else tail_fall(r["curve"][key])


ZERO_SHOT = "M3GNet-MP-2021.2.8-PES"  #: the pretrained model of the zero-shot rows


def zero_shot(spec: dict, record: Path, elements) -> None:
    """The pretrained model's test-split force and stress MAE per element, added to the ``record`` file once
    per test file (an entry made from another file is computed again; energies are not compared: Materials
    Project and mlearn PBE energies differ by a per-element offset)."""
    from jaxmat.data import read_frames
    from jaxmat.models import load_model
    from jaxmat.train import error_metrics, predict_frames

    model = None
    for el in elements:
        source = {"model": ZERO_SHOT, "test_file": "/".join(Path(data_file(spec, el, "test")).parts[-2:])}
        if load_record(record).get(f"zeroshot/{el}/-", {}).get("source") == source:
            continue
        model = model or load_model(ZERO_SHOT)
        m = error_metrics(predict_frames(model, model.params, read_frames(data_file(spec, el, "test"))))
        add_to_record(record, {"key": f"zeroshot/{el}/-", "source": source, "test": m})


def table(spec: dict, record: dict) -> list[str]:
    tail = f"val E / F fall (%), last {round(100 * TAIL_FRACTION)} % of epochs"
    lines = ["| element | model | test E MAE (meV/atom) | test F MAE (eV/A) | test stress MAE (GPa) | seeds | "
             f"epochs: run (best) | ended | {tail} | one-core min/run |", "|---|---|---|---|---|---|---|---|---|---|"]
    for el in elements(spec):
        zs = record.get(f"zeroshot/{el}/-")
        if zs:
            lines.append(f"| {el} | pretrained, zero-shot | - | {zs['test']['f_mae']:.4f} | {zs['test']['s_mae']:.3f} | | | | | |")
        for setup in spec["setups"]:
            rows = [record[f"{setup}/{el}/{s}"] for s in spec["seeds"] if f"{setup}/{el}/{s}" in record]
            if el not in spec["setups"][setup]["epochs"]:
                continue
            if not rows:
                lines.append(f"| {el} | {label(spec, setup)} | not run yet | | | 0 | | | | |")
                continue
            t, n = [r["test"] for r in rows], f"{len(rows)}" + ("" if len(rows) == len(spec["seeds"]) else " (incomplete)")
            ones = [stage_one(spec, record, setup, f"{setup}/{el}/{s}") for s in spec["seeds"] if f"{setup}/{el}/{s}" in record]
            epochs = ", ".join((f"{o['epochs']} ({o['best_epoch']}) + " if o else "") + f"{r['epochs']} ({r['best_epoch']})"
                               for r, o in zip(rows, ones))
            end = lambda r: ENDED.get(r["ended"], r["ended"])  # noqa: E731
            fall = lambda r: " / ".join("-" if run_tail(r, k) is None else f"{run_tail(r, k):.1f}"  # noqa: E731
                                        for k in ("val_e_mae", "val_f_mae"))
            ended = ", ".join((f"{end(o)} + " if o else "") + end(r) for r, o in zip(rows, ones))
            falls = ", ".join((f"{fall(o)} + " if o else "") + fall(r) for r, o in zip(rows, ones))
            lines.append(
                f"| {el} | {label(spec, setup)} | {fmt([x['e_mae'] for x in t], 2)} | {fmt([x['f_mae'] for x in t], 4)} | "
                f"{fmt([x['s_mae'] for x in t], 3)} | {n} | "
                f"{epochs} | {ended} | {falls} | "
                f"{fmt([r['minutes'] + (o['minutes'] if o else 0) for r, o in zip(rows, ones)], 1)} |")
        for name, values in PUBLISHED.items():
            if el in values:
                e, f = values[el]
                lines.append(f"| {el} | {name} | {e} | {f} | | | | | | |")
    return lines


def mtp_bar(spec: dict, record: dict) -> list[str]:
    """Per setup and element with every seed run: the mean test energy MAE as a multiple of MTP's and the
    mean force MAE minus MTP's, and whether the bar is met (energy at most MTP's, force below MTP's +
    F_SLACK); then, per setup run on all of MTP's elements, whether it meets the bar on every one."""
    import numpy as np

    lines = ["| model | element | test E MAE / MTP's | test F MAE - MTP's (eV/A) | bar met |", "|---|---|---|---|---|"]
    verdicts = []
    for setup in spec["setups"]:
        met = {}
        for el in spec["setups"][setup]["epochs"]:
            rows = [record[f"{setup}/{el}/{s}"] for s in spec["seeds"] if f"{setup}/{el}/{s}" in record]
            if len(rows) < len(spec["seeds"]) or el not in MTP:
                continue
            e, f = (float(np.mean([r["test"][k] for r in rows])) for k in ("e_mae", "f_mae"))
            met[el] = e <= MTP[el][0] and f < MTP[el][1] + F_SLACK
            lines.append(f"| {label(spec, setup)} | {el} | {e / MTP[el][0]:.2f}x | {f - MTP[el][1]:+.4f} | "
                         f"{'yes' if met[el] else 'no'} |")
        if set(met) == set(MTP):
            verdicts.append(f"{label(spec, setup)}: the bar is met on {sum(met.values())} of {len(MTP)} elements"
                            + (" (all of them: the issue's bar is reached)." if all(met.values()) else "."))
    return lines + ["", *(verdicts or ["No setup has every seed on all five elements yet."])]


def group_table(spec: dict, record: dict) -> list[str]:
    lines = ["| element | model | " + " | ".join(GROUPS) + " |", "|---|---|" + "---|" * len(GROUPS)]
    for el in elements(spec):
        for setup in spec["setups"]:
            rows = [record[f"{setup}/{el}/{s}"] for s in spec["seeds"] if f"{setup}/{el}/{s}" in record]
            if not rows:
                continue
            cells = []
            for g in GROUPS:
                got = [r["test"]["by_group"][g] for r in rows if g in r["test"]["by_group"]]
                cells.append(f"{fmt([x['e_mae'] for x in got], 1)} / {fmt([x['f_mae'] for x in got], 3)} ({got[0]['n']})"
                             if got else "-")
            lines.append(f"| {el} | {label(spec, setup)} | " + " | ".join(cells) + " |")
    return lines


def plot_curves(spec: dict, record: dict, out: Path) -> None:
    from jaxmat.train._plots import _plt

    plt = _plt()
    setups = list(spec["setups"])
    fig, axes = plt.subplots(1, len(setups), figsize=(6 * len(setups), 4), squeeze=False)
    for ax, setup in zip(axes[0], setups):
        for k, el in enumerate(elements(spec)):
            for s in spec["seeds"]:
                r = record.get(f"{setup}/{el}/{s}")
                one = r and stage_one(spec, record, setup, f"{setup}/{el}/{s}")
                if r:  # a two-stage run: stage one's curve, then stage two's
                    y = (one["curve"]["val_f_mae"] if one else []) + r["curve"]["val_f_mae"]
                    ax.plot(range(1, len(y) + 1), y, color=f"C{k}", alpha=0.8, label=el if s == spec["seeds"][0] else None)
        ax.set(title=label(spec, setup), xlabel="epoch", ylabel="validation force MAE (eV/A)", yscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


#: search.md's budget rule, fixed before the search: a run that ended at its budget (the cap, or the
#: schedule's last epoch) with its best validation energy or force MAE still falling by more than this (%)
#: over the last TAIL_FRACTION of its epochs was limited by that budget
BUDGET_FALL = 2.0


def budget_note(record: dict) -> str:
    """How the trained runs ended (early stopping, the cap, the schedule's end), stage ones and final runs
    counted apart, how much their validation curves still fell at the end, and which ended at their budget
    still falling by more than BUDGET_FALL % (search.md's rule): budget limited those, and only those."""
    trained = {k: r for k, r in record.items() if not k.startswith("zeroshot/")}
    if not any(not k.endswith("/stage1") for k in trained):
        return "Budget: no finished run yet."
    keys = ("val_e_mae", "val_f_mae")
    lines = []
    for kind, runs in (("Stage ones", {k: r for k, r in trained.items() if k.endswith("/stage1")}),
                       ("Final runs (single stage or stage two)", {k: r for k, r in trained.items() if not k.endswith("/stage1")})):
        if not runs:
            continue
        counts = {v: sum(r["ended"] == k for r in runs.values()) for k, v in ENDED.items()}
        falls = {key: [run_tail(r, key) for r in runs.values() if run_tail(r, key) is not None] for key in keys}
        short = sum(any(run_tail(r, key) is None for key in keys) for r in runs.values())
        lines.append(f"{kind} ({len(runs)}): " + ", ".join(f"{n} ended by {v}" for v, n in counts.items() if n)
                     + (f"; over the last {round(100 * TAIL_FRACTION)} % of their epochs the best validation energy MAE fell "
                        f"by {_spread(falls['val_e_mae'])} and the force MAE by {_spread(falls['val_f_mae'])}"
                        if falls["val_e_mae"] and falls["val_f_mae"] else "")
                     + (f"; {short} too short for a tail fall" if short else "") + ".")
    falling = sorted(k for k, r in trained.items() if r["ended"] in ("cap", "epochs")
                     and any((run_tail(r, key) or 0.0) > BUDGET_FALL for key in keys))
    rule = (f"ended at its cap or its schedule's end with its best validation E or F still falling by more than "
            f"{BUDGET_FALL:g} % over its last {round(100 * TAIL_FRACTION)} % of epochs (search.md's budget rule)")
    if falling:
        verdict = (f"Budget: {len(falling)} of the {len(trained)} trained stages and runs {rule.replace('its', 'their')}: "
                   f"{', '.join(falling)}. Budget limited those, and a longer budget is a lever for them (not tried: the "
                   "protocol fixed the budget before the test split was seen).")
    else:
        verdict = (f"Budget: none of the {len(trained)} trained stages and runs {rule}: by that measure budget is not "
                   "what limits these numbers.")
    return "Of the finished runs: " + " ".join(lines) + " " + verdict


def _spread(values) -> str:
    import statistics

    return f"{min(values):.1f}-{max(values):.1f} % (median {statistics.median(values):.1f} %)"


def write_results(spec: dict, record: dict, root: Path, lanes: int = 2) -> str:
    parity = root / "parity"
    parity.mkdir(exist_ok=True)
    for setup in spec["setups"]:
        for el in elements(spec):
            src = root / "runs" / f"{setup}_{el}_{spec['seeds'][0]}" / "parity_test.png"
            if f"{setup}/{el}/{spec['seeds'][0]}" in record and src.is_file() and not (parity / f"{setup}_{el}.png").is_file():
                shutil.copy(src, parity / f"{setup}_{el}.png")
    plot_curves(spec, record, root / "curves.png")
    setups = {k: {"epochs": v["epochs"], "config": merge(spec["base"], v["config"])} for k, v in spec["setups"].items()}
    text = "\n".join([
        "# mlearn: fine-tuned and from-scratch M3GNet under one protocol", "",
        "Reproduce: `python experiments/mlearn/run.py` (resumable; skips the runs in runs.json).", "",
        "## Protocol (fixed before any test number of these runs was seen)", "",
        spec["description"], "",
        "- Validation: `data.valid_fraction` of the official training file, a seeded split per seed "
        f"(seeds {spec['seeds']}: split, data order and initialisation).",
        "- Model selection: the best-validation EMA weights; early stopping on the validation loss. Nothing is chosen "
        "on the test split.",
        "- Test: the official test split, evaluated once per final model by the driver (the training config never "
        "names it); results are reported as they came out, with no tuning after.",
        f"- Each run on one CPU core (one XLA thread), {lanes} run(s) side by side on this 2-core machine; float32. "
        "The minutes are wall time of that core (two runs side by side run slower than one alone: memory bandwidth; "
        "the first runs also shared the machine with development work).",
        "- GAP and MTP were fitted on the whole official training split; the runs here train on 90 % of it "
        "(the rest is their validation split).",
        "- Table: mean ± sample std over the seeds. Force MAE over all force components; stress in GPa.",
        "", "Configs (merged into the library defaults, `jaxmat train --describe`):", "", "```json",
        json.dumps(setups, indent=1), "```", "",
        *([f"For your own data: {spec['start_from']}", ""] if spec.get("start_from") else []),
        "## Results", "", *table(spec, record), "",
        "The zero-shot row is the pretrained model without training; its energies are not compared (the pretrained "
        "model's Materials Project PBE energies differ from mlearn's by a per-element offset, which fine-tuning refits). "
        "GAP and MTP: Zuo et al., J. Phys. Chem. A 124, 731 (2020), test-set MAEs, taken from the tabulation in "
        "ACEpotentials.jl (examples/zuobench/error_table.jl, reproducing Witt et al., J. Chem. Phys. 159, 164101 (2023)); "
        "forces there have two decimals. JARVIS: M3GNet trained on mlearn by the JARVIS-Leaderboard, the values "
        "quoted in issue 35 (the leaderboard entry was not re-checked from here). Two-stage runs show stage one + stage "
        "two in the epochs (best epoch in brackets), ended and fall columns.", "",
        budget_note(record), "",
        f"Against MTP (the bar: mean test energy MAE at most MTP's, mean force MAE below MTP's + {F_SLACK} eV/A, "
        "over the seeds):", "", *mtp_bar(spec, record), "",
        "Test MAE per mlearn group (energy meV/atom / force eV/A, mean over seeds; structures per group in brackets):", "",
        *group_table(spec, record), "",
        "Plots: `curves.png` (validation force MAE per epoch, every run), `parity/<setup>_<element>.png` "
        "(test parity of seed 0).", "",
        *(["## Reading the table (`discussion.md`: written after the test numbers it discusses, dated there; it changes none)", "",
           (root / "discussion.md").read_text().strip(), ""] if (root / "discussion.md").is_file() else [])])
    (root / "results.md").write_text(text)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lanes", type=int, default=2, help="runs side by side, one core each")
    p.add_argument("--minutes", type=float, default=None, help="wall-time cap per run and call (resumable)")
    p.add_argument("--only", nargs="*", default=None, help="run keys or prefixes, e.g. finetune/Si")
    p.add_argument("--protocol", type=Path, default=HERE / "protocol.json")
    p.add_argument("--root", type=Path, default=HERE, help="where runs/, runs.json and the results go")
    p.add_argument("--report", action="store_true",
                   help="train nothing: redraw results.md, curves.png and parity/ from runs.json (and its zero-shot rows)")
    args = p.parse_args(argv)
    spec = json.loads(args.protocol.read_text())
    spec["data"] = str((args.protocol.parent / spec["data"]).resolve())  # relative to the protocol file
    first, second = plan(spec, args.root)
    # the whole plan, not only --only's runs: results.md tabulates every setup of the record
    check_record(first + second, load_record(args.root / "runs.json"), args.root / "runs.json")
    pick = lambda runs: [r for r in runs if not args.only or any(r.key.startswith(o) for o in args.only)]  # noqa: E731
    first, second = pick(first), pick(second)
    runs = first + second
    missing = sorted({f for r in runs for f in (r.config["data"]["train"], r.test) if f and not Path(f).is_file()})
    if missing:
        sys.exit("missing data (the mlearn files come with ../shared/data/mlearn):\n  " + "\n  ".join(missing))
    if args.report:  # a driver may be training now: its runs.json is only read, and added to under its lock
        failed, unfinished = [], []
        keys = [k for k in load_record(args.root / "runs.json") if not k.startswith("zeroshot/")]
    else:
        _, failed, unfinished = run_staged(first, second, args.root / "runs.json", lanes=args.lanes, minutes=args.minutes)
        keys = [r.key for r in runs]
    zero_shot(spec, args.root / "runs.json", sorted({k.split("/")[1] for k in keys}))
    print(write_results(spec, load_record(args.root / "runs.json"), args.root, lanes=args.lanes))
    report_unfinished(failed, unfinished)


if __name__ == "__main__":
    main()
