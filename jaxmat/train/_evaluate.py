"""Predictions and error metrics of a model on labelled frames."""

from __future__ import annotations

import jax
import numpy as np

from jaxmat._checks import at_least, check_value, one_of
from jaxmat.data import batch_budget, build_graphs, make_batch, pack
from jaxmat.errors import DatasetError
from jaxmat.graph import DEFAULT_CHECKS, StructureChecks
from jaxmat.models._predict import host_graph_totals, warn_outside_domain
from jaxmat.potential import energy_forces_stress


def predict(model, params, frames, graphs_per_batch: int = 4, dtype: str = "float32", graphs=None,
            checks: StructureChecks = DEFAULT_CHECKS) -> dict:
    """Per-frame predictions and labels: energy per atom (eV/atom), forces (eV/A), stress (eV/A^3);
    for structure -> property models the target in ``e_pred``/``e_ref`` (forces/stress empty)."""
    check_value("evaluate", "graphs_per_batch", graphs_per_batch, "int", at_least(1))
    check_value("evaluate", "dtype", dtype, "str", one_of("float32", "float64"))
    warn_outside_domain(model, [f.atoms for f in frames])
    graphs = graphs if graphs is not None else build_graphs(frames, model, checks)
    budget = batch_budget(graphs, graphs_per_batch)
    out = {k: [] for k in ("e_pred", "e_ref", "f_pred", "f_ref", "s_pred", "s_ref")}
    with jax.enable_x64(dtype == "float64"):
        graph_kind = model.output_kind == "graph"
        fn = jax.jit(lambda p, g: {"energy": model.apply(p, g)} if graph_kind
                     else energy_forces_stress(model.apply, p, g, True))
        p = jax.tree_util.tree_map(lambda x: np.asarray(x, dtype), params)
        for idx in pack(np.arange(len(frames)), graphs, budget):
            batch = make_batch(idx, frames, graphs, budget, dtype)
            res = jax.device_get(fn(p, batch.graph))
            if not graph_kind:  # totals in float64 from the per-atom energies
                res["energy"] = host_graph_totals(res["energies"], batch.graph.graph.nodes["graph_index"], budget.n_graph)
            start = 0
            for k, i in enumerate(idx):
                f, n = frames[i], len(frames[i].atoms)
                if f.energy is not None:
                    per = 1 if graph_kind else n
                    out["e_pred"].append(res["energy"][k] / per)
                    out["e_ref"].append(f.energy / per)
                if graph_kind:
                    continue
                if f.forces is not None:
                    out["f_pred"].append(res["forces"][start : start + n])
                    out["f_ref"].append(f.forces)
                if f.stress is not None:
                    out["s_pred"].append(res["stress"][k])
                    out["s_ref"].append(f.stress)
                start += n
    return {k: (np.concatenate(v) if k.startswith("f") else np.asarray(v)) if v else np.zeros(0) for k, v in out.items()}


def error_metrics(pred: dict) -> dict:
    """MAE/RMSE: energy meV/atom, forces eV/A (per component), stress GPa (per component)."""
    from jaxmat.train._loss import EV_A3_TO_GPA

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
    return {g: {"n": len(fs), **error_metrics(predict(model, params, fs, graphs_per_batch, dtype))}
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
