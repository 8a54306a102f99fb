"""What a training run leaves behind: the best model, an ensemble's calibration, results.json."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from jaxmat.graph import StructureChecks
from jaxmat.models import Ensemble, load_model
from jaxmat.train._checkpoint import replace_dir
from jaxmat.train._evaluate import error_metrics, predict_frames
from jaxmat.train._plots import learning_curves, parity_plots
from jaxmat.train._report import finite_json, summary, write_json
from jaxmat.train._uq import fit_calibration, format_scales, predict_members, uncertainty_plots, uncertainty_report


def save_best(workdir, model, params, metrics):
    """Write ``params`` (float32) as ``workdir/best_model`` (atomically), with the validation ``metrics``."""
    tmp = workdir / "best_model.tmp"
    params32 = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params)
    # the trained model is named after its run; a fine-tuned one records the model it started from
    meta = {**model.metadata, "validation": finite_json(metrics), "name": Path(workdir).resolve().name}
    if "name" in model.metadata:
        meta["init_from"] = model.metadata["name"]
    dataclasses.replace(model, params=params32, metadata=meta, _cache={}).save(tmp)
    replace_dir(tmp, workdir / "best_model")


def _calibrate(ens, graphs_per_batch, workdir, model, frame_sets, masks, dtype, checks, log):
    """Fit the spreads' scales (on the validation frames, or out of sample on the training frames,
    each by the members whose ``masks`` row leaves it out) and store them in best_model/.
    ``frame_sets``: the (train, valid, test) frames; ``ens``: the ensemble section."""
    method, oos = ens.calibration, ens.calibrate_on == "out_of_sample"
    train_frames, valid_frames = frame_sets[:2]
    frames = train_frames if oos else valid_frames
    if method == "none" or not frames:
        if method != "none":
            log("no validation frames: the ensemble's spreads are left uncalibrated (scale 1)")
        return model
    pred = predict_members(model, frames, graphs_per_batch, dtype, checks)
    seen = masks > 0 if oos else None
    model = model.with_calibration(fit_calibration(model, pred, method, seen, warn=lambda msg: log(f"warning: {msg}")))
    model.save(workdir / "best_model.tmp")
    replace_dir(workdir / "best_model.tmp", workdir / "best_model")
    cal = model.calibration
    where = "training frames, each by the members that did not train on it" if oos else "validation frames"
    log(f"calibrated on {len(frames)} {where}: {format_scales(cal)}")
    return model


def write_results(dcfg, ens, workdir, dtype, frame_sets, masks, log, ended) -> dict:
    """After training: calibrate an ensemble's spreads, evaluate the best model on the validation and
    test frames (metrics, parity and uncertainty plots), draw the learning curves and write
    results.json (with ``ended``: why training stopped). Returns the results ({} without a best model).

    ``dcfg``, ``ens``: the data and ensemble sections; ``frame_sets``: the (train, valid, test)
    frames; ``masks``: the frames each deep-ensemble member trained on (``subsample_masks``), or None."""
    valid_frames, test_frames = frame_sets[1:]
    best = workdir / "best_model"
    if not best.is_dir():
        log(f"no best model was written: the run stopped (step budget or wall time) before its first epoch ended; "
            f"continue it with --resume (jaxmat train CONFIG --workdir {workdir} --resume)")
        return {}
    model = load_model(best)
    checks = StructureChecks(**dcfg.structure_checks)
    if isinstance(model, Ensemble):
        model = _calibrate(ens, dcfg.graphs_per_batch, workdir, model, frame_sets, masks, dtype, checks, log)
    results = {"ended": ended}
    if "epoch" in model.metadata.get("validation", {}):
        results["best_epoch"] = model.metadata["validation"]["epoch"]
    sets = [("valid", valid_frames)] if valid_frames else []
    if test_frames:
        sets.append(("test", test_frames))
    for name, frames in sets:
        pred = predict_frames(model, model.params, frames, dcfg.graphs_per_batch, dtype, checks=checks)
        results[name] = error_metrics(pred)
        parity_plots(pred, workdir / f"parity_{name}.png", title=name)
        if isinstance(model, Ensemble):  # the spreads on this set, raw and calibrated
            members = predict_members(model, frames, dcfg.graphs_per_batch, dtype, checks)
            results[name]["uncertainty"] = uncertainty_report(model, members)
            uncertainty_plots(model, members, workdir / f"uncertainty_{name}")
    learning_curves(workdir / "metrics.csv", workdir / "learning_curves.png")
    results = finite_json(results)  # strict JSON: a metric that is not a number is null
    write_json(workdir / "results.json", results)
    unit = model.metadata.get("units", {}).get("target", "(target unit)") if model.output_kind == "graph" else None
    log(summary(workdir, results, {name: len(frames) for name, frames in sets}, unit))
    return results
