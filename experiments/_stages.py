"""Runs in two stages (MACE-style: the energy weight raised near the end), for the drivers of
``_protocol``: ``staged`` splits one planned run into its two runs, ``run_staged`` trains each stage
two right after its own stage one."""

from __future__ import annotations

import shutil
from pathlib import Path

from _protocol import Run, check_record, forget, load_record, merge, run_all, status


def staged(run: Run, stage_two: dict) -> tuple[Run, Run]:
    """A run in two stages (MACE-style: the energy weight raised near the end). Stage one, keyed
    ``<key>/stage1`` in ``<workdir>_stage1``, trains with ``run.config`` for ``1 - fraction`` of its
    epochs and cap and is never tested; stage two (``run.key``, ``run.workdir``, ``run.test``) starts
    from stage one's kept (best-validation EMA) model as it is (no element-reference refit; the model
    section's ``family`` and ``hyperparameters``, which built stage one's model, are dropped), with
    ``stage_two["over"]`` merged in, for the rest. ``stage_two``: {"fraction": f, "over": {...}}."""
    f, epochs = stage_two["fraction"], run.config["optim"]["epochs"]
    if not 0 < f < 1:
        raise ValueError(f"{run.key}: stage_two.fraction = {f}: expected a fraction between 0 and 1")
    part = lambda share: None if run.cap_minutes is None else run.cap_minutes * share  # noqa: E731
    dir_one = run.workdir.with_name(run.workdir.name + "_stage1")
    one = Run(run.key + "/stage1", merge(run.config, {"optim": {"epochs": max(1, round((1 - f) * epochs))}}), None,
              dir_one, part(1 - f))
    model = {k: v for k, v in run.config.get("model", {}).items()  # stage one's model comes whole: with init_from,
             if k not in ("family", "hyperparameters")}              # its architecture keys would ask to grow it
    cfg = merge(merge({**run.config, "model": model}, stage_two["over"]), {
        "model": {"init_from": str(dir_one / "best_model"), "refit_element_refs": False},
        "optim": {"epochs": max(1, epochs - one.config["optim"]["epochs"])}})
    return one, Run(run.key, cfg, run.test, run.workdir, part(f))


def run_staged(first: list[Run], second: list[Run], record: Path, lanes: int = 2, minutes: float | None = None,
               accept_unstamped: bool = False, log=print) -> tuple[dict, list[str], list[str]]:
    """``run_all`` on the single-stage runs and stage ones (``first``), each stage two (``second``, from
    ``staged``) right after its own stage one on the same core, so that a run's two stages end together.
    Stage one's kept model stays in its workdir, on the machine that trained it: a stage two not yet
    started (or only partly trained: that part is dropped) whose stage one is recorded but whose model
    is not here (a new machine) trains its stage one again (it is never tested), logged, and its record
    entry is replaced. A stage two that has ended here is never retrained; a recorded stage two without
    its recorded stage one is an error (its minutes and epochs would be under-reported)."""
    check_record(first + second, load_record(record), record, accept_unstamped)  # before hours of stage ones
    done = load_record(record)
    after = {r.key + "/stage1": r for r in second}
    chains = []
    for run in first:
        two = after.get(run.key)
        if two is None:
            chains.append(run)
            continue
        if two.key in done and run.key not in done:
            raise ValueError(f"{record}: {two.key} is recorded but not its stage one {run.key}")
        if (run.key in done and two.key not in done and not (run.workdir / "best_model").exists()
                and status(two.workdir) in ("new", "partial")):
            log(f"{run.key}: recorded, but its model {run.workdir / 'best_model'} is not on this machine; "
                f"training it again for {two.key}" + (" (dropping that stage two's partial run)"
                                                      if status(two.workdir) == "partial" else ""))
            forget(record, run.key)
            for wd in (run.workdir, two.workdir):  # stale parts of them must not be resumed as the new ones
                if wd.exists():
                    shutil.rmtree(wd)
        chains.append([run, two])
    return run_all(chains, record, lanes=lanes, minutes=minutes, log=log, accept_unstamped=accept_unstamped)


def split(planned) -> tuple[list[Run], list[Run]]:
    """(single-stage runs and stage ones, stage twos) of ``planned``: (run, its ``stage_two`` or None) pairs."""
    first, second = [], []
    for run, stage_two in planned:
        if stage_two:
            one, two = staged(run, stage_two)
            first.append(one)
            second.append(two)
        else:
            first.append(run)
    return first, second
