"""The validation-only recipe search on mlearn (plan: search.md; configurations: search_spec.json).

    python experiments/mlearn/search.py [--lanes 2] [--minutes M] [--only NAME ...] [--spec FILE] [--root DIR] [--report]
    python experiments/mlearn/search.py --round-two YYYY-MM-DD   (once round 1 is complete)

Trains every (configuration, element, seed) of the spec that search_record.json does not hold yet, on
the seeded validation split of the official *training* file, through the shared protocol driver
(experiments/_protocol.py: one pinned single-thread subprocess per run, resumable from checkpoints,
each run capped at the spec's one-core minutes). No run names a test file and none is evaluated on
one: the record holds validation numbers only. A configuration with a ``stage_two`` (MACE-style: the
energy weight raised near the end) trains in two runs: stage one gets ``1 - fraction`` of the cap and
of the epochs, then stage two starts from stage one's kept (best-validation EMA) model with the
stage-two overrides for the rest. Afterwards the table of every configuration's validation numbers
is written into search.md (below its plan), with round 1's verdicts by the plan's rule once the base
has its seeds; ``--round-two`` then writes round 2 into the spec, dated, before any of its runs.
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
from run import ENDED, MTP, run_tail  # noqa: E402

MARK = "<!-- validation results: written by search.py below this line -->"


def data_file(spec: dict, element: str) -> str:
    path = spec["data"].format(element=element)
    if "_train" not in Path(path).name:
        raise ValueError(f"search data {path!r}: the search trains and validates on the official training files only")
    return str(path)


def _config(spec: dict, conf: dict, element: str, seed: int) -> dict:
    cfg = merge(merge(spec["base"], conf.get("over", {})), {
        "data": {"train": data_file(spec, element)}, "optim": {"epochs": spec["epochs"][element]}, "run": {"seed": seed}})
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


def score(spec: dict, valid: dict, element: str) -> float:
    """The selection score of one run: its validation energy and force MAE, each as a multiple of the
    spec's ``scale`` (MTP's test MAEs, Zuo et al. 2020: a fixed yardstick, not a number from our test
    split), averaged. Lower is better."""
    e_ref, f_ref = spec.get("scale", MTP)[element]
    return 0.5 * (valid["e_mae"] / e_ref + valid["f_mae"] / f_ref)


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
    complete = {n: statistics.mean(v.values()) for n, v in overall.items() if len(v) == len(spec["elements"])}
    if complete:
        ranked = sorted(complete.items(), key=lambda kv: kv[1])
        lines += ["", f"Mean score over {', '.join(spec['elements'])} (lower is better): "
                  + ", ".join(f"{n} {v:.2f}" for n, v in ranked) + "."]
    return lines


def _overall(spec: dict, record: dict, name: str, seeds) -> dict[int, float]:
    """seed -> the mean over the spec's elements of that seed's run score, for those of ``seeds`` run on
    every element."""
    return {s: statistics.mean(score(spec, record[f"{name}/{el}/{s}"]["valid"], el) for el in spec["elements"])
            for s in seeds if all(f"{name}/{el}/{s}" in record for el in spec["elements"])}


def _dimensions(spec: dict) -> dict[str, list[str]]:
    """The spec's dimensions, checked: every configuration but the base in exactly one of them."""
    dims, names = spec.get("dimensions", {}), [c["name"] for c in spec["configs"]]
    listed = sum(dims.values(), [])
    round_one = [n for n in names if n not in ("base", "combined")]
    if sorted(listed) != sorted(round_one):
        raise ValueError(f"search spec: each round-1 configuration must be in exactly one dimension; "
                         f"dimensions list {sorted(listed)}, configurations are {sorted(round_one)}")
    return dims


def verdicts(spec: dict, record: dict) -> tuple[list[str], dict | None]:
    """Round 1's rule (search.md): a change wins its dimension when its overall score beats the base's
    mean by more than the base's seed-to-seed (sample) std; of two winning values the better score is
    kept. Changes are judged on round 1's seeds (``spec["seeds"]``), so seeds added in round 2 do not
    move a verdict. Returns the report lines and {dimension: winning configuration or None (the base's
    value stays)}, the latter None until the base has its seeds and every change its runs."""
    want = next(c for c in spec["configs"] if c["name"] == "base").get("seeds", spec["seeds"])
    if len(want) < 2:  # a spec without the rule's noise floor (a smoke test): the table alone
        return ["No round 1 verdicts: the base has fewer than 2 seeds, so no seed-to-seed std."], None
    base = _overall(spec, record, "base", want)
    if len(base) < len(want):
        return [f"Round 1 verdicts wait for the base's seeds ({len(base)} of {len(want)} complete on every element)."], None
    mean, std = statistics.mean(base.values()), statistics.stdev(base.values())
    lines = [f"Round 1 verdicts: the base's overall score is {mean:.3f} ± {std:.3f} (seeds {', '.join(map(str, base))}); "
             f"a change wins when its score is below {mean - std:.3f}. Dimensions: the plan's table rows "
             "(`dimensions` in search_spec.json); at most one value of each is kept.", "",
             "| dimension | configuration | overall score | base - score | verdict | paired: base on the same seed - score "
             "(information, not the rule) |", "|---|---|---|---|---|---|"]
    winners, complete = {}, True
    for dim, names in _dimensions(spec).items():
        best = None
        for name in names:
            got = _overall(spec, record, name, spec["seeds"])
            if len(got) < len(spec["seeds"]):
                complete = False
                lines.append(f"| {dim} | {name} | not run yet | | | |")
                continue
            value = statistics.mean(got.values())
            wins = mean - value > std
            paired = statistics.mean(base[k] - v for k, v in got.items())
            lines.append(f"| {dim} | {name} | {value:.3f} | {mean - value:+.3f} | {'wins' if wins else 'no'} | {paired:+.3f} |")
            if wins and (best is None or value < best[1]):
                best = (name, value)
        winners[dim] = best and best[0]
    picked = [f"{d}: {w}" for d, w in winners.items() if w]
    lines += ["", "Winners so far: " + ("; ".join(picked) if picked else "none (the base's values stay)") + "."]
    return lines, winners if complete else None


def round_two(spec: dict, record: dict, date: str) -> dict:
    """The spec with round 2 added (search.md): the winning changes of round 1 combined into "combined"
    (the base's seeds) when two or more dimensions won, and the best single change given the base's
    seeds. Refuses an incomplete round 1 and a spec that already has its round 2."""
    if "round_two" in spec:
        raise ValueError(f"the spec already has its round 2 ({spec['round_two']})")
    _, winners = verdicts(spec, record)
    if winners is None:
        raise ValueError("round 1 is not complete: every configuration and the base's seeds need their runs")
    spec = json.loads(json.dumps(spec))
    confs = {c["name"]: c for c in spec["configs"]}
    won = [confs[w] for w in winners.values() if w]
    seeds = confs["base"]["seeds"]
    if len(won) >= 2:
        over, two = {}, [c["stage_two"] for c in won if "stage_two" in c]
        if len(two) > 1:
            raise ValueError("two winning configurations have a stage two: say how they combine")
        for conf in won:
            over = merge(over, conf.get("over", {}))
        spec["configs"].append({"name": "combined", "change": "; ".join(c["change"] for c in won), "seeds": seeds,
                                "over": over, **({"stage_two": two[0]} if two else {})})
    if won:
        min(won, key=lambda c: statistics.mean(_overall(spec, record, c["name"], spec["seeds"]).values()))["seeds"] = seeds
    spec["round_two"] = (f"Added {date} by search.py --round-two from round 1's verdicts (search.md), before any "
                         f"round-2 run: winners {', '.join(c['name'] for c in won) or 'none (the base is the recipe)'}.")
    return spec


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
                      *table(spec, record), "", *verdicts(spec, record)[0], ""])
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
    args = p.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    if args.round_two:
        spec = round_two(spec, load_record(args.root / "search_record.json"), args.round_two)
        args.spec.write_text(dump_spec(spec))
        print(spec["round_two"])
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
