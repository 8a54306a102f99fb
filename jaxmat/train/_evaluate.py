"""Predictions and error metrics of a model on labelled frames.

``predict_frames`` (one model) and ``jaxmat.train.predict_members`` (every member of an ensemble)
are thin front ends of one core: the frames packed into padded batches (``frame_batches``), run by
``jaxmat.models.run_batches``, their labelled entries gathered by ``labelled_entries``.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxmat.data import batch_budget, build_graphs, make_batch, pack
from jaxmat.errors import DatasetError
from jaxmat.graph import DEFAULT_CHECKS, StructureChecks
from jaxmat.models import check_batching, run_batches, warn_outside_domain
from jaxmat.potential import energy_forces_stress
from jaxmat.train._loss import EV_A3_TO_GPA

#: the labelled quantities (``labelled_entries``)
QUANTITIES = ("energy", "forces", "stress")


def frame_batches(frames, graphs, budget, dtype: str):
    """``(indices, padded graph)`` of each batch: the frames in order, greedily packed into ``budget``
    (``jaxmat.data.pack``); a generator, so each batch is padded when it is run."""
    for idx in pack(np.arange(len(frames)), graphs, budget):
        yield idx, make_batch(idx, frames, graphs, budget, dtype).graph


def labelled_entries(frames, results, per_structure: bool = False) -> dict:
    """The labelled entries of ``frames`` from ``run_batches`` results, in batch order: lists
    ``energy`` (per atom, or the model's value when ``per_structure``), ``forces`` (n, 3) per frame,
    ``stress`` (3, 3), each with the reference (``<q>_ref``) and the frame index (``<q>_frame``).
    Predictions keep any leading axes of the results (ensemble members: (K, ...))."""
    out = {f"{q}{s}": [] for q in QUANTITIES for s in ("", "_ref", "_frame")}
    for idx, res in results:
        start = 0
        for k, i in enumerate(idx):
            f, n = frames[i], len(frames[i].atoms)
            if f.energy is not None:
                per = 1 if per_structure else n
                out["energy"].append(res["energy"][..., k] / per)
                out["energy_ref"].append(f.energy / per)
                out["energy_frame"].append(i)
            if per_structure:
                continue
            if f.forces is not None:
                out["forces"].append(res["forces"][..., start : start + n, :])
                out["forces_ref"].append(f.forces)
                out["forces_frame"].append(np.full(n, i))
            if f.stress is not None:
                out["stress"].append(res["stress"][..., k, :, :])
                out["stress_ref"].append(f.stress)
                out["stress_frame"].append(i)
            start += n
    return out


def predict_frames(model, params, frames, graphs_per_batch: int = 4, dtype: str = "float32", graphs=None,
                   checks: StructureChecks = DEFAULT_CHECKS) -> dict:
    """Per-frame predictions and labels: energy per atom (eV/atom), forces (eV/A), stress (eV/A^3);
    for structure -> property models the target in ``e_pred``/``e_ref`` (forces/stress empty).
    ``graphs``: the frames' host graphs when already built (``jaxmat.data.build_graphs``)."""
    check_batching("evaluate", graphs_per_batch, dtype)
    warn_outside_domain(model, [f.atoms for f in frames])
    graphs = graphs if graphs is not None else build_graphs(frames, model, checks)
    budget = batch_budget(graphs, graphs_per_batch)
    graph_kind = model.output_kind == "graph"
    fn = jax.jit(lambda p, g: {"energy": model.apply(p, g)} if graph_kind
                 else energy_forces_stress(model.apply, p, g, True))
    results = run_batches(fn, params, frame_batches(frames, graphs, budget, dtype), dtype)
    entries = labelled_entries(frames, results, per_structure=graph_kind)
    names = {"e_pred": "energy", "e_ref": "energy_ref", "f_pred": "forces", "f_ref": "forces_ref",
             "s_pred": "stress", "s_ref": "stress_ref"}
    return {k: (np.concatenate(entries[q]) if k.startswith("f") else np.asarray(entries[q])) if entries[q]
            else np.zeros(0) for k, q in names.items()}


def error_metrics(pred: dict) -> dict:
    """MAE/RMSE: energy meV/atom, forces eV/A (per component), stress GPa (per component)."""
    out = {}
    for key, scale in (("e", 1000.0), ("f", 1.0), ("s", EV_A3_TO_GPA)):
        if pred[f"{key}_ref"].size:
            err = (np.asarray(pred[f"{key}_pred"]) - np.asarray(pred[f"{key}_ref"])).ravel() * scale
            out[f"{key}_mae"], out[f"{key}_rmse"] = float(np.abs(err).mean()), float(np.sqrt((err**2).mean()))
    return out


def metrics_by_group(model, params, frames, key: str, graphs_per_batch: int = 4, dtype: str = "float32") -> dict:
    """``error_metrics`` per value of ``atoms.info[key]`` (e.g. mlearn's ``group``: AIMD-NVT,
    Elastic, Surface, Vacancy), each with ``n`` structures; frames without the key form "(none)"."""
    if frames and not any(key in f.atoms.info for f in frames):
        known = sorted({k for f in frames for k in f.atoms.info})
        raise DatasetError(f"no frame has info[{key!r}] (the group key); info keys present: {known}")
    groups: dict[str, list] = {}
    for f in frames:
        groups.setdefault(str(f.atoms.info.get(key, "(none)")), []).append(f)
    return {g: {"n": len(fs), **error_metrics(predict_frames(model, params, fs, graphs_per_batch, dtype))}
            for g, fs in sorted(groups.items())}


def format_metrics_by_group(table: dict) -> str:
    """One row per group: structures, MAE of energy (meV/atom), forces (eV/A), stress (GPa)."""
    lines = [f"{'group':16s} {'n':>4s} {'E MAE':>9s} {'F MAE':>8s} {'S MAE':>8s}",
             f"{'':16s} {'':>4s} {'meV/atom':>9s} {'eV/A':>8s} {'GPa':>8s}"]
    for g, m in table.items():
        cells = [f"{m[k]:{w}.{d}f}" if k in m else f"{'-':>{w}s}" for k, w, d in (("e_mae", 9, 2), ("f_mae", 8, 3), ("s_mae", 8, 3))]
        lines.append(f"{g[:16]:16s} {m['n']:4d} " + " ".join(cells))
    return "\n".join(lines)


def format_metrics(metrics: dict) -> str:
    rows = [("energy", "e", "meV/atom"), ("forces", "f", "eV/A"), ("stress", "s", "GPa")]
    lines = [f"{'quantity':10s} {'MAE':>10s} {'RMSE':>10s}  unit"]
    for name, k, unit in rows:
        if f"{k}_mae" in metrics:
            lines.append(f"{name:10s} {metrics[k + '_mae']:10.4f} {metrics[k + '_rmse']:10.4f}  {unit}")
    return "\n".join(lines)
