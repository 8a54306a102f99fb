"""What a training run says and writes about itself: strict JSON files (never a bare NaN), where a
checkpoint stands (epochs counted from 1, as the log counts them), the short summary at the end of
a run and the report of a run stopped by Ctrl-C."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np

from jaxmat._io import atomic_write
from jaxmat.train._checkpoint import CHECKPOINT_FILE

#: (metrics key prefix, name, unit) of the error metrics (``error_metrics``) a summary shows
QUANTITIES = (("e", "energy", "meV/atom"), ("f", "forces", "eV/A"), ("s", "stress", "GPa"))


def finite_json(obj):
    """``obj`` (dicts, lists, numbers, strings) with every NaN or infinity as None (JSON null) and
    numpy scalars as Python numbers: a bare ``NaN`` is not JSON, and strict readers refuse it."""
    if isinstance(obj, dict):
        return {str(k): finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def write_json(path, obj) -> Path:
    """Write ``finite_json(obj)`` to ``path`` atomically (a reader never sees half a file);
    ``allow_nan=False``, so nothing non-finite can ever slip through."""
    path = Path(path)
    atomic_write(path, (json.dumps(finite_json(obj), indent=2, allow_nan=False) + "\n").encode())
    return path


def position(step: int, epoch: int, batch: int) -> str:
    """Where a training state stands, epochs counted from 1 as the log counts them (``epoch``: the
    number of finished epochs; ``batch``: batches done of the next one)."""
    if batch:
        return f"step {step}: epoch {epoch + 1}, after its batch {batch}"
    return f"step {step}: the end of epoch {epoch}" if epoch else f"step {step}: before the first epoch"


def saved_position(workdir) -> str | None:
    """``position`` of the checkpoint in ``workdir``, or None when there is none (or it cannot be read)."""
    import flax.serialization

    path = Path(workdir) / CHECKPOINT_FILE
    try:
        state = flax.serialization.msgpack_restore(path.read_bytes())["state"]
        return position(int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"]))
    except Exception:  # noqa: BLE001 (absent or unreadable: the caller says there is nothing to resume)
        return None


def _best_epoch(workdir: Path):
    try:
        return json.loads((workdir / "best_model" / "config.json").read_text())["metadata"]["validation"]["epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def interrupted_report(workdir, resume_command: str, again_command: str) -> str:
    """The lines a run stopped by Ctrl-C ends with: the checkpoint kept (path, step, epoch, age),
    the best model so far, and the exact command that continues it."""
    workdir = Path(workdir)
    where = saved_position(workdir)
    if where is None:
        return (f"interrupted (Ctrl-C) before the first checkpoint was written: {workdir} holds nothing to resume. "
                f"Start it again with:\n  {again_command}")
    ckpt = workdir / CHECKPOINT_FILE
    age = time.time() - ckpt.stat().st_mtime
    best = _best_epoch(workdir)
    best_text = f"; best model so far: {workdir / 'best_model'} (epoch {best})" if best is not None else ""
    return (f"interrupted (Ctrl-C). The last checkpoint is kept: {ckpt} ({where}; written {age:.0f} s before the "
            f"interrupt){best_text}. Resume with:\n  {resume_command}")


def _metrics_text(metrics: dict, graph_unit: str | None) -> str:
    if graph_unit is not None:  # a structure -> property model: e_* are 1000 x the target's unit
        return f"MAE {metrics['e_mae'] / 1000:.4g} {graph_unit} (RMSE {metrics['e_rmse'] / 1000:.4g})"
    return ", ".join(f"{name} MAE {metrics[k + '_mae']:.4g} {unit} (RMSE {metrics[k + '_rmse']:.4g})"
                     for k, name, unit in QUANTITIES if k + "_mae" in metrics)


def summary(workdir, results: dict, counts: dict, graph_unit: str | None = None) -> str:
    """A few lines on a finished run: why and when it ended, the best epoch, the validation and test
    errors with units (``counts``: structures per set), and where the model and results are."""
    workdir = Path(workdir)
    rows = list(csv.DictReader(open(workdir / "metrics.csv"))) if (workdir / "metrics.csv").is_file() else []
    last = int(rows[-1]["epoch"]) if rows else 0
    why = {"epochs": "optim.epochs reached", "early_stopping": "early stopping: no better validation loss for "
           "optim.early_stopping_patience epochs", "wall_time": "wall-time budget run.max_wall_minutes; --resume "
           "continues it", "max_steps": "run.max_steps; --resume continues it"}.get(results.get("ended"), "?")
    best = results.get("best_epoch")
    lines = [f"training ended after epoch {last} ({why})" + (f"; best model from epoch {best}" if best else "")]
    for name in ("valid", "test"):
        if name in results:
            cal = ""
            unc = results[name].get("uncertainty", {})
            cov = [f"{q} {unc[q]['calibrated']['coverage_68']:.2f}" for q in ("energy", "forces") if q in unc
                   and unc[q]["calibrated"].get("coverage_68") is not None]
            if cov:
                cal = f"; calibrated 68 % coverage {', '.join(cov)}"
            lines.append(f"  {name} ({counts.get(name, '?')} structures): {_metrics_text(results[name], graph_unit)}{cal}")
    lines.append(f"best model: {workdir / 'best_model'} (use it with JaxmatCalculator(model=...)); all metrics: "
                 f"{workdir / 'results.json'}; plots: learning_curves.png, parity_*.png there")
    return "\n".join(lines)
