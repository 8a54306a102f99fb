"""The selection rules of the mlearn recipe search (search.md's plan; search.py drives the runs).

Round 1 (``verdicts``): one change at a time from the base; a change wins its dimension by more than
the base's seed-to-seed std. Round 2 (``round_two`` writes it into the spec, ``recipe`` applies it):
the winners combined, the best of the base, the best single change and the combination over the
base's seeds. Round 3 (``round_three``, ``scratch_rates``): the recipe from scratch with a peak
learning rate picked from the plan's values, per model. Every score is a validation score
(``score``); nothing here reads a test number.
"""

from __future__ import annotations

import json
import statistics

from _protocol import merge
from run import MTP

def score(spec: dict, valid: dict, element: str) -> float:
    """The selection score of one run: its validation energy and force MAE, each as a multiple of the
    spec's ``scale`` (MTP's test MAEs, Zuo et al. 2020: a fixed yardstick, not a number from our test
    split), averaged. Lower is better."""
    e_ref, f_ref = spec.get("scale", MTP)[element]
    return 0.5 * (valid["e_mae"] / e_ref + valid["f_mae"] / f_ref)


def _overall(spec: dict, record: dict, name: str, seeds) -> dict[int, float]:
    """seed -> the mean over the spec's elements of that seed's run score, for those of ``seeds`` run on
    every element."""
    return {s: statistics.mean(score(spec, record[f"{name}/{el}/{s}"]["valid"], el) for el in spec["elements"])
            for s in seeds if all(f"{name}/{el}/{s}" in record for el in spec["elements"])}


def _dimensions(spec: dict) -> dict[str, list[str]]:
    """The spec's dimensions, checked: every configuration but the base in exactly one of them."""
    dims = spec.get("dimensions", {})
    listed = sum(dims.values(), [])
    round_one = [c["name"] for c in spec["configs"] if c["name"] not in ("base", "combined") and c.get("round") != 3]
    if sorted(listed) != sorted(round_one):
        raise ValueError(f"search spec: each round-1 configuration must be in exactly one dimension; "
                         f"dimensions list {sorted(listed)}, configurations are {sorted(round_one)}")
    return dims


def _base_seeds(spec: dict) -> list[int]:
    return next(c for c in spec["configs"] if c["name"] == "base").get("seeds", spec["seeds"])


def verdicts(spec: dict, record: dict) -> tuple[list[str], dict | None]:
    """Round 1's rule (search.md): a change wins its dimension when its overall score beats the base's
    mean by more than the base's seed-to-seed (sample) std; of two winning values the better score is
    kept. Changes are judged on round 1's seeds (``spec["seeds"]``), so seeds added in round 2 do not
    move a verdict. Returns the report lines and {dimension: winning configuration or None (the base's
    value stays)}, the latter None until the base has its seeds and every change its runs."""
    want = _base_seeds(spec)
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
    seeds = _base_seeds(spec)
    if len(won) >= 2:
        over, two = {}, [c["stage_two"] for c in won if "stage_two" in c]
        if len(two) > 1:
            raise ValueError("two winning configurations have a stage two: say how they combine")
        for conf in won:
            over = merge(over, conf.get("over", {}))
        spec["configs"].append({"name": "combined", "change": "; ".join(c["change"] for c in won), "seeds": seeds,
                                "changes": len(won),
                                "over": over, **({"stage_two": two[0]} if two else {})})
    if won:
        min(won, key=lambda c: statistics.mean(_overall(spec, record, c["name"], spec["seeds"]).values()))["seeds"] = seeds
    spec["round_two"] = (f"Added {date} by search.py --round-two from round 1's verdicts (search.md), before any "
                         f"round-2 run: winners {', '.join(c['name'] for c in won) or 'none (the base is the recipe)'}.")
    return spec


def lr_name(lr: float) -> str:
    """A learning rate as the configuration names write it: 2e-3, 2.5e-4."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def recipe(spec: dict, record: dict) -> tuple[list[str], str | None]:
    """Round 2's rule (search.md): of the base, the best single change and "combined" (those in round
    2: the configurations given the base's seeds), the best mean overall score over those seeds; a
    simpler candidate within the base's seed-to-seed std of the best takes the tie: fewer changes,
    counted from the base (the search's starting point: the library's defaults with a fine-tuning
    learning rate, warm-up and patience), then one stage before two. Returns the report lines and
    the recipe's configuration name, the latter None until round 2 is written and every candidate
    has its runs."""
    if "round_two" not in spec:
        return ["The recipe waits for round 2 (`search.py --round-two DATE` once round 1 is complete)."], None
    seeds = _base_seeds(spec)
    candidates = [c for c in spec["configs"] if c.get("round") != 3 and c.get("seeds", spec["seeds"]) == seeds]
    scores, waiting = {}, []
    for conf in candidates:
        got = _overall(spec, record, conf["name"], seeds)
        if len(got) < len(seeds):
            waiting.append(conf["name"])
        else:
            scores[conf["name"]] = statistics.mean(got.values())
    if waiting:
        return [f"Round 2 waits for the runs of {', '.join(waiting)} on seeds {', '.join(map(str, seeds))}."], None
    std = statistics.stdev(_overall(spec, record, "base", seeds).values())
    best = min(scores.values())
    simpler = {c["name"]: (0 if c["name"] == "base" else c.get("changes", 1), 2 if "stage_two" in c else 1)
               for c in candidates}
    tied = [n for n, v in scores.items() if v - best <= std]
    pick = min(tied, key=lambda n: (simpler[n], scores[n]))
    return [f"Round 2 (mean overall score over seeds {', '.join(map(str, seeds))}; the base's std {std:.3f} is the "
            "tie margin): " + ", ".join(f"{n} {v:.3f}" for n, v in sorted(scores.items(), key=lambda kv: kv[1]))
            + f". The recipe: **{pick}**" + ("" if pick == min(scores, key=scores.get) else
                                            " (within the tie margin of the best, and simpler)") + "."], pick


def round_three(spec: dict, record: dict, date: str) -> dict:
    """The spec with round 3 added (search.md): the recipe trained from scratch, one configuration per
    model of ``spec["round_three_plan"]`` and peak learning rate of its list, on the plan's seeds with
    the model's own epoch horizon. Refuses before the recipe is chosen and a spec that has its round 3."""
    if "round_three" in spec:
        raise ValueError(f"the spec already has its round 3 ({spec['round_three']})")
    _, pick = recipe(spec, record)
    if pick is None:
        raise ValueError("round 2 is not complete: the recipe is not chosen yet")
    spec = json.loads(json.dumps(spec))
    plan, chosen = spec["round_three_plan"], next(c for c in spec["configs"] if c["name"] == pick)
    unset = [m for m, v in plan["models"].items() if not v.get("epochs")]
    if unset:
        raise ValueError(f"round_three_plan: no epoch horizon for {', '.join(unset)} yet: measure its epoch time "
                         "(experiments/mlearn/epoch_times.py) and write the horizon into the plan, dated, first")
    for model, m in plan["models"].items():
        for lr in plan["learning_rates"]:
            spec["configs"].append({
                "name": f"{model}-lr{lr_name(lr)}", "round": 3, "model": model, "seeds": plan["seeds"], "epochs": m["epochs"],
                "change": f"{m['change']}, peak lr {lr_name(lr)} (recipe: {pick})",
                "over": merge(merge(chosen.get("over", {}), m["over"]), {"optim": {"learning_rate": lr}}),
                **({"stage_two": chosen["stage_two"]} if "stage_two" in chosen else {})})
    spec["round_three"] = (f"Added {date} by search.py --round-three, before any round-3 run: the recipe ({pick}) "
                           f"from scratch, {', '.join(plan['models'])} x peak lr "
                           f"{', '.join(map(lr_name, plan['learning_rates']))}.")
    return spec


def scratch_rates(spec: dict, record: dict) -> tuple[list[str], dict | None]:
    """Round 3's pick: per model, the learning rate of the lowest overall score on the plan's seeds.
    Returns the report lines and {model: configuration name}, None until every round-3 run is in."""
    confs = [c for c in spec["configs"] if c.get("round") == 3]
    if not confs:
        return [], None
    picks, lines, complete = {}, ["", "Round 3 (from scratch; per model the peak lr of the lowest overall score):"], True
    for model in dict.fromkeys(c["model"] for c in confs):
        got = {c["name"]: (_overall(spec, record, c["name"], c["seeds"]), c["seeds"]) for c in confs if c["model"] == model}
        done = {n: statistics.mean(v.values()) for n, (v, seeds) in got.items() if len(v) == len(seeds)}
        if len(done) < len(got):
            complete = False
            lines.append(f"* {model}: waits for {', '.join(n for n in got if n not in done)}.")
            continue
        picks[model] = min(done, key=done.get)
        lines.append(f"* {model}: " + ", ".join(f"{n} {v:.3f}" for n, v in done.items()) + f" -> **{picks[model]}**.")
    return lines, picks if complete else None


def searched_setup(spec: dict, name: str) -> dict:
    """A search configuration as a protocol setup would train it: ``config`` (the search's base with the
    configuration's overrides), ``stage_two`` (or None) and ``epochs`` per search element. A protocol
    setup that names a configuration (``"search"``) must train exactly this (tests/test_mlearn_search.py)."""
    conf = next((c for c in spec["configs"] if c["name"] == name), None)
    if conf is None:
        raise ValueError(f"the search has no configuration {name!r}")
    return {"config": merge(spec["base"], conf.get("over", {})), "stage_two": conf.get("stage_two"),
            "epochs": {el: conf.get("epochs", spec["epochs"])[el] for el in spec["elements"]}}
