"""The validation-only recipe search on mlearn (plan: search.md; configurations: search_spec.json).

    python experiments/mlearn/search.py [--lanes 2] [--minutes M] [--only NAME ...] [--spec FILE] [--root DIR] [--report]
    python experiments/mlearn/search.py --round-two YYYY-MM-DD   (once round 1 is complete)
    python experiments/mlearn/search.py --round-three YYYY-MM-DD (once round 2 has chosen the recipe)

Trains every (configuration, element, seed) of the spec that search_record.json does not hold yet, on
the seeded validation split of the official *training* file, through the shared protocol driver
(experiments/_protocol.py: one pinned single-thread subprocess per run, resumable from checkpoints,
each run capped at the spec's one-core minutes). No run names a test file and none is evaluated on
one: the record holds validation numbers only. A configuration with a ``stage_two`` (MACE-style: the
energy weight raised near the end) trains in two runs: stage one gets ``1 - fraction`` of the cap and
of the epochs, then stage two starts from stage one's kept (best-validation EMA) model with the
stage-two overrides for the rest. Afterwards the table of every configuration's validation numbers
is written into search.md (below its plan), with each round's verdicts by the plan's rules
(``_rounds.py``); ``--round-two`` and ``--round-three`` write the next round into the spec, dated,
before any of its runs.
search_record.json is committed; search_runs/ stays local.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from _protocol import TAIL_FRACTION, Run, check_record, load_record, merge, report_unfinished  # noqa: E402
from _stages import run_staged, split  # noqa: E402
from _rounds import recipe, round_three, round_two, scratch_rates, score, verdicts  # noqa: E402
from run import ENDED, run_tail  # noqa: E402

MARK = "<!-- validation results: written by search.py below this line -->"


def data_file(spec: dict, element: str) -> str:
    path = spec["data"].format(element=element)
    if "_train" not in Path(path).name:
        raise ValueError(f"search data {path!r}: the search trains and validates on the official training files only")
    return str(path)


def _config(spec: dict, conf: dict, element: str, seed: int) -> dict:
    cfg = merge(merge(spec["base"], conf.get("over", {})), {
        "data": {"train": data_file(spec, element)}, "optim": {"epochs": conf.get("epochs", spec["epochs"])[element]},
        "run": {"seed": seed}})
    if "test" in cfg["data"]:
        raise ValueError(f"search configuration {conf['name']!r} names a test file; the search never uses one")
    return cfg


def plan(spec: dict, root: Path) -> tuple[list[Run], list[Run]]:
    """(stage-one and single-stage runs, stage-two runs) of every configuration, element and seed.

    Keys: "name/element/seed" for a configuration's final model (its stage two, if it has one) and
    "name/element/seed/stage1" for a stage one."""
    planned = []
    for conf in spec["configs"]:
        for el in spec["elements"]:
            for seed in conf.get("seeds", spec["seeds"]):
                key = f"{conf['name']}/{el}/{seed}"
                planned.append((Run(key, _config(spec, conf, el, seed), None, root / "search_runs" / key.replace("/", "_"),
                                    spec["cap_minutes"]), conf.get("stage_two")))
    return split(planned)


def _cell(values, digits):
    if not values:
        return "-"
    m = statistics.mean(values)
    return f"{m:.{digits}f}" if len(values) == 1 else f"{m:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(spec: dict, record: dict) -> list[str]:
    """One row per configuration and element: validation MAEs, score, epochs, how runs ended, curve tail."""
    tail = round(100 * TAIL_FRACTION)
    lines = ["| configuration | change | element | seeds | val E MAE (meV/atom) | val F MAE (eV/A) | val stress MAE (GPa) "
             f"| score (x MTP) | epochs (best) | ended | val E / F fall (%), last {tail} % | one-core min |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    overall = {}
    for conf in spec["configs"]:
        for el in spec["elements"]:
            keys = [f"{conf['name']}/{el}/{s}" for s in conf.get("seeds", spec["seeds"])]
            rows = [record[k] for k in keys if k in record]
            change = conf.get("change", "")
            if not rows:
                lines.append(f"| {conf['name']} | {change} | {el} | 0 | not run yet | | | | | | | |")
                continue
            stage1 = [record.get(k + "/stage1") for k in keys if k in record]
            minutes = [r["minutes"] + (s["minutes"] if s else 0) for r, s in zip(rows, stage1)]
            scores = [score(spec, r["valid"], el) for r in rows]
            overall.setdefault(conf["name"], {})[el] = statistics.mean(scores)
            falls = ", ".join(" / ".join("-" if run_tail(r, k) is None else f"{run_tail(r, k):.1f}"
                                         for k in ("val_e_mae", "val_f_mae")) for r in rows)
            lines.append(
                f"| {conf['name']} | {change} | {el} | {len(rows)} | {_cell([r['valid']['e_mae'] for r in rows], 2)} | "
                f"{_cell([r['valid']['f_mae'] for r in rows], 4)} | "
                f"{_cell([r['valid']['s_mae'] for r in rows if 's_mae' in r['valid']], 3)} | {_cell(scores, 2)} | "
                f"{', '.join(str(r['epochs']) + ' (' + str(r['best_epoch']) + ')' for r in rows)} | "
                f"{', '.join(ENDED.get(r['ended'], r['ended']) for r in rows)} | {falls} | {_cell(minutes, 1)} |")
    later = {c["name"] for c in spec["configs"] if c.get("round") == 3}  # from scratch: ranked by round 3's rule
    complete = {n: statistics.mean(v.values()) for n, v in overall.items()
                if len(v) == len(spec["elements"]) and n not in later}
    if complete:
        ranked = sorted(complete.items(), key=lambda kv: kv[1])
        lines += ["", f"Mean score over {', '.join(spec['elements'])} (lower is better): "
                  + ", ".join(f"{n} {v:.2f}" for n, v in ranked) + "."]
    return lines


def dump_spec(spec: dict) -> str:
    """The spec as JSON with one line per top-level key and per configuration (a readable diff)."""
    rows = [f" {json.dumps(k)}: " + (json.dumps(v) if k != "configs" else "[\n" + ",\n".join("  " + json.dumps(c) for c in v) + "\n ]")
            for k, v in spec.items()]
    return "{\n" + ",\n".join(rows) + "\n}\n"


def write_report(spec: dict, record: dict, md: Path) -> str:
    """Replace everything below MARK in search.md (the plan above it stays as written) with the table."""
    head = md.read_text().split(MARK)[0].rstrip() if md.is_file() else "# mlearn recipe search"
    text = "\n".join([head, "", MARK, "", "## Validation results", "",
                      f"From `search_record.json` ({sum(1 for k in record if not k.endswith('/stage1'))} finished "
                      "configuration runs); mean ± sample std over seeds. The score is the mean of the validation "
                      "energy and force MAE as multiples of MTP's test MAE (a fixed scale).", "",
                      *table(spec, record), "", *verdicts(spec, record)[0], "", *recipe(spec, record)[0],
                      *scratch_rates(spec, record)[0], ""])
    md.write_text(text)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lanes", type=int, default=2, help="runs side by side, one core each")
    p.add_argument("--minutes", type=float, default=None, help="wall-time limit per run and call (resumable)")
    p.add_argument("--only", nargs="*", default=None, help="configuration names (or key prefixes, e.g. base/Si)")
    p.add_argument("--spec", type=Path, default=HERE / "search_spec.json")
    p.add_argument("--root", type=Path, default=HERE, help="where search_runs/, search_record.json and search.md go")
    p.add_argument("--report", action="store_true", help="only redraw search.md's table from search_record.json")
    p.add_argument("--round-two", metavar="DATE", help="add round 2 (from round 1's verdicts) to the spec, dated; train nothing")
    p.add_argument("--round-three", metavar="DATE", help="add round 3 (the recipe from scratch) to the spec, dated; train nothing")
    args = p.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    for date, add, said in ((args.round_two, round_two, "round_two"), (args.round_three, round_three, "round_three")):
        if date:
            spec = add(spec, load_record(args.root / "search_record.json"), date)
            args.spec.write_text(dump_spec(spec))
            print(spec[said])
            return
    spec["data"] = str((args.spec.parent / spec["data"]).resolve())  # relative to the spec file
    first, second = plan(spec, args.root)
    record_file = args.root / "search_record.json"
    # the whole plan, not only --only's runs: the report tabulates every configuration of the record.
    # The record's first entries predate the fingerprints: checked against their workdirs where here.
    check_record(first + second, load_record(record_file), record_file, accept_unstamped=True)
    if args.report:
        print(write_report(spec, load_record(record_file), args.root / "search.md"))
        return
    pick = lambda runs: [r for r in runs if not args.only or any(r.key.split("/")[0] == o or r.key.startswith(o)  # noqa: E731
                                                               for o in args.only)]
    first, second = pick(first), pick(second)
    missing = sorted({r.config["data"]["train"] for r in first + second if not Path(r.config["data"]["train"]).is_file()})
    if missing:
        sys.exit("missing data (the mlearn files come with ../shared/data/mlearn):\n  " + "\n  ".join(missing))
    _, failed, unfinished = run_staged(first, second, record_file, lanes=args.lanes, minutes=args.minutes,
                                       accept_unstamped=True)
    print(write_report(spec, load_record(record_file), args.root / "search.md"))
    report_unfinished(failed, unfinished)


if __name__ == "__main__":
    main()
