"""Runs in two stages (MACE-style: the energy weight raised near the end), for the drivers of
``_protocol``: ``staged`` splits one planned run into its two runs, ``run_staged`` trains the stage
ones and then the stage twos whose stage one is recorded."""

from __future__ import annotations

from pathlib import Path

from _protocol import Run, check_record, load_record, merge, run_all


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
               accept_unstamped: bool = False) -> tuple[dict, list[str], list[str]]:
    """``run_all`` on the single-stage runs and stage ones (``first``), then on the stage twos (``second``,
    from ``staged``) whose stage one is recorded; a stage two still waiting is reported unfinished."""
    check_record(first + second, load_record(record), record, accept_unstamped)  # before hours of stage ones
    done, failed, unfinished = run_all(first, record, lanes=lanes, minutes=minutes, accept_unstamped=accept_unstamped)
    ready = [r for r in second if r.key + "/stage1" in done]
    unfinished += [f"{r.key} (waits for its stage one)" for r in second if r.key + "/stage1" not in done]
    if ready:
        _, failed2, unfinished2 = run_all(ready, record, lanes=lanes, minutes=minutes, accept_unstamped=accept_unstamped)
        failed, unfinished = failed + failed2, unfinished + unfinished2
    return load_record(record), failed, unfinished


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
