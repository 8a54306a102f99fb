"""An ensemble on labelled frames: every member's predictions, the calibration of its spreads, the
uncertainty report (``jaxmat.uncertainty`` metrics) and its plots."""

from __future__ import annotations

import warnings

import jax
import numpy as np

from jaxmat import uncertainty as uq
from jaxmat.data import batch_budget, build_graphs
from jaxmat.errors import ConfigError, DatasetError
from jaxmat.graph import DEFAULT_CHECKS
from jaxmat.models import Ensemble, check_batching, run_batches
from jaxmat.train._evaluate import frame_batches, labelled_entries
from jaxmat.train._loss import EV_A3_TO_GPA

#: quantities and the unit of their predictions (``predict_members``)
QUANTITIES = (("energy", "eV/atom"), ("forces", "eV/A"), ("stress", "eV/A^3"))
#: unit and factor from the prediction unit of each quantity in reports and plots: those of ``error_metrics``
REPORT_UNITS = {"energy": ("meV/atom", 1000.0), "forces": ("eV/A", 1.0), "stress": ("GPa", EV_A3_TO_GPA)}


def predict_members(ens: Ensemble, frames, graphs_per_batch: int = 4, dtype: str = "float32",
                    checks=DEFAULT_CHECKS, mode: str = "auto") -> dict:
    """Per-member predictions and labels of the labelled entries of ``frames``:
    ``energy`` (K, n_e) eV/atom, ``forces`` (K, n_f, 3) eV/A, ``stress`` (K, n_s, 3, 3) eV/A^3, and
    the references ``energy_ref`` (n_e,), ``forces_ref`` (n_f, 3), ``stress_ref`` (n_s, 3, 3), and
    the index of each entry's frame in ``energy_frame``, ``forces_frame``, ``stress_frame``. The
    ensemble front end of ``predict_frames`` (same batches, same core)."""
    if not isinstance(ens, Ensemble):
        raise ConfigError(f"an uncertainty report needs an ensemble (jaxmat.models.Ensemble), got {type(ens).__name__}")
    check_batching("evaluate", graphs_per_batch, dtype)
    graphs = build_graphs(frames, ens, checks)
    budget = batch_budget(graphs, graphs_per_batch)
    mode = ens.choose_mode(mode, budget.n_edge)
    fn = jax.jit(lambda p, g: ens.member_results(p, g, True, mode))
    out = labelled_entries(frames, run_batches(fn, ens.params, frame_batches(frames, graphs, budget, dtype), dtype))
    K = ens.size
    return {"energy": np.stack(out["energy"], 1) if out["energy"] else np.zeros((K, 0)),
            "energy_ref": np.asarray(out["energy_ref"]),
            "forces": np.concatenate(out["forces"], 1) if out["forces"] else np.zeros((K, 0, 3)),
            "forces_ref": np.concatenate(out["forces_ref"]) if out["forces_ref"] else np.zeros((0, 3)),
            "stress": np.stack(out["stress"], 1) if out["stress"] else np.zeros((K, 0, 3, 3)),
            "stress_ref": np.asarray(out["stress_ref"]) if out["stress_ref"] else np.zeros((0, 3, 3)),
            "energy_frame": np.asarray(out["energy_frame"], int), "stress_frame": np.asarray(out["stress_frame"], int),
            "forces_frame": np.concatenate(out["forces_frame"]) if out["forces_frame"] else np.zeros(0, int)}


def errors_and_sigmas(pred: dict) -> dict:
    """{quantity: (ref, err of the mean, raw sigma)} flat (the members' ddof=1 std, uncalibrated)."""
    out = {}
    for q, _ in QUANTITIES:
        if pred[f"{q}_ref"].size:
            mean, std = uq.member_stats(pred[q])
            out[q] = (pred[f"{q}_ref"].ravel(), (mean - pred[f"{q}_ref"]).ravel(), std.ravel())
    return out


def out_of_sample(pred: dict, seen) -> dict:
    """{quantity: (ref, err, sigma, M)} flat, from the members that did not train on each entry's
    frame (``seen``: (K, n_frames) bool, ``predict_members`` on those training frames); entries with
    fewer than 2 such members are dropped."""
    seen = np.asarray(seen, bool)
    out = {}
    for q, _ in QUANTITIES:
        ref = pred[f"{q}_ref"]
        if not ref.size:
            continue
        values, free = pred[q], ~seen[:, pred[f"{q}_frame"]]  # (K, n, ...), (K, n)
        w = free.reshape(free.shape + (1,) * (values.ndim - 2)).astype(np.float64)
        M = w.sum(axis=0)
        mean = (w * values).sum(axis=0) / np.maximum(M, 1)
        var = (w * (values - mean) ** 2).sum(axis=0) / np.maximum(M - 1, 1)
        keep = np.broadcast_to(M >= 2, ref.shape).ravel()
        out[q] = tuple(a.ravel()[keep] for a in (ref, mean - ref, np.sqrt(var), np.broadcast_to(M, ref.shape)))
    return out


def fit_calibration(ens: Ensemble, pred: dict, method: str = "nll", seen=None, warn=None) -> dict:
    """Scales of the energy, force and stress spreads from predictions (``predict_members``):
    "nll" (``uncertainty.nll_scale``), "musil" (``uncertainty.musil_alpha``) or "none" (not calibrated).
    The frames are held out (validation), or, with ``seen`` ((K, n_frames) bool: which member
    trained on which frame), training frames scored by the members that did not see them.

    A quantity with nothing to fit on (no labels of it, every label 0, or out of sample fewer than 4
    members that did not see it for "musil") is left not calibrated: scale None, and ``warn``
    (default ``warnings.warn``) is told why. Refused: no labels at all (DatasetError), "musil" in
    sample with fewer than 4 members, and members that agree exactly (zero spread) on every labelled
    entry of a quantity (ConfigError: no scale can make a zero spread honest)."""
    name = method if seen is None else f"{method}, out of sample"
    cal = {q: None for q, _ in QUANTITIES}
    if method == "none":
        return {**cal, "method": "none"}
    if method == "musil" and seen is None:
        uq.check_musil_size(ens.size, "calibration method 'musil'", "the method 'nll'")
    if seen is None:
        data = {q: (*v, np.full(v[0].shape, ens.size)) for q, v in errors_and_sigmas(pred).items()}
    else:
        data = out_of_sample(pred, seen)
    if not data:
        raise DatasetError("cannot calibrate: the frames have no energy, force or stress labels")
    warn = warn or (lambda msg: warnings.warn(msg, UserWarning, stacklevel=3))
    for q, _ in QUANTITIES:
        if q not in data:
            warn(f"the calibration frames have no {q} labels: the {q} spreads are NOT calibrated (stored as null; "
                 "the raw members' std is reported)")
            continue
        ref, err, sigma, M = data[q]
        keep = ref != 0
        if keep.any() and not np.any(sigma[keep] > 0):
            raise ConfigError(f"cannot calibrate the {q} spreads: the {ens.size} members agree exactly (zero spread) on "
                              f"all {int(keep.sum())} labelled {q} entries of the calibration frames; are they copies "
                              "of one model? An ensemble needs separately trained members")
        keep &= sigma > 0
        if method == "musil":
            keep &= M >= uq.MUSIL_MIN_MEMBERS
        if not np.any(keep):
            why = ("with at least %d members that did not train on them" % uq.MUSIL_MIN_MEMBERS
                   if method == "musil" and np.any(ref != 0) else "with a non-zero reference")
            warn(f"no {q} entry of the calibration frames {why}: the {q} spreads are NOT calibrated (stored as null; "
                 "the raw members' std is reported)")
            continue
        e, s = err[keep], sigma[keep]
        scale = uq.musil_alpha(e, s, M[keep]) if method == "musil" else uq.nll_scale(e, s)
        if not np.isfinite(scale) or scale <= 0:
            raise ConfigError(f"cannot calibrate the {q} spreads: the ensemble mean reproduces every {q} label of the "
                              f"calibration frames exactly (scale {scale}); calibrate on frames the members did not "
                              "train on")
        cal[q] = float(scale)
    return {**cal, "method": name}


def format_scales(cal: dict) -> str:
    """'spreads x 1.2 (energy), x 0.8 (forces), not calibrated (stress) [nll]' of a calibration dict."""
    parts = [f"x {cal[q]:.3g} ({q})" if cal.get(q) is not None else f"not calibrated ({q})" for q, _ in QUANTITIES]
    return "spreads " + ", ".join(parts) + f" [{cal.get('method')}]"


def uncertainty_report(ens: Ensemble, pred: dict) -> dict:
    """{quantity: {"unit", "raw": metrics, "calibrated": metrics, "scale"}} of
    ``uncertainty.calibration_metrics`` (entries with zero reference or zero spread dropped), in the
    units of ``error_metrics`` (``REPORT_UNITS``: energy meV/atom, forces eV/A, stress GPa; MAE, RMS
    sigma, CRPS and NLL depend on them). A quantity the ensemble has not calibrated has
    ``"calibrated": None`` and ``"scale": None``."""
    report = {}
    for q, (ref, err, sigma) in errors_and_sigmas(pred).items():
        e, s = uq.usable(ref, err, sigma)
        if e.size < 2:
            continue
        unit, factor = REPORT_UNITS[q]
        e, s = factor * e, factor * s
        calibrated = ens.is_calibrated(q)
        scale = ens.spread_scale(q) if calibrated else None
        report[q] = {"unit": unit, "raw": uq.calibration_metrics(e, s),
                     "calibrated": uq.calibration_metrics(e, scale * s) if calibrated else None, "scale": scale}
    return report


def format_report(report: dict) -> str:
    """The report as a table: one raw and one calibrated row per quantity, each with its unit (that of
    MAE, RMS sigma and NLL; the other columns have none)."""
    cols = (("mae", "MAE", ".4f"), ("rms_sigma", "RMS sig", ".4f"), ("nll", "NLL", ".3f"), ("spearman", "Spearman", ".3f"),
            ("auroc_worst10", "AUROC10", ".3f"), ("miscalibration_area", "mis.area", ".3f"),
            ("coverage_68", "cov68", ".3f"), ("coverage_95", "cov95", ".3f"))
    lines = [f"{'quantity':8s} {'unit':8s} {'spreads':14s} " + " ".join(f"{h:>9s}" for _, h, _ in cols)]
    for q, r in report.items():
        for which in ("raw", "calibrated"):
            m = r[which]
            label = "raw" if which == "raw" else ("not calibrated" if m is None else "x%.3g" % r["scale"])
            cells = [f"{'-':>9s}"] * len(cols) if m is None else [f"{m[k]:9{f}}" for k, _, f in cols]
            lines.append(f"{q:8s} {r['unit']:8s} {label:14s} " + " ".join(cells))
    return "\n".join(lines)


def uncertainty_plots(ens: Ensemble, pred: dict, prefix) -> list:
    """``<prefix>_reliability.png`` (RMSE vs RMS sigma per bin, calibrated where the ensemble is) and
    ``<prefix>_scatter.png`` (|error| vs sigma) for forces and energies, in ``REPORT_UNITS``; returns
    the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = {q: uq.usable(ref, REPORT_UNITS[q][1] * err, REPORT_UNITS[q][1] * ens.spread_scale(q) * sigma)
            for q, (ref, err, sigma) in errors_and_sigmas(pred).items() if q != "stress"}
    data = {q: v for q, v in data.items() if v[0].size >= 2}
    if not data:
        raise DatasetError("nothing to plot: no labelled energies or forces with a non-zero spread")
    units = {q: u for q, (u, _) in REPORT_UNITS.items()}
    paths = []
    for kind in ("reliability", "scatter"):
        fig, axes = plt.subplots(1, len(data), figsize=(4.5 * len(data), 4), squeeze=False)
        for ax, (q, (e, s)) in zip(axes[0], data.items()):
            if kind == "reliability":
                rs, rmse, _ = uq.reliability_curve(e, s, 10)
                top = 1.05 * max(rs.max(), rmse.max())
                ax.plot([0, top], [0, top], "k--", lw=1, label="calibrated")
                ax.plot(rs, rmse, "o-", label=ens.name + ("" if ens.is_calibrated(q) else " (not calibrated)"))
                ax.set_xlabel(f"RMS predicted sigma ({units[q]})")
                ax.set_ylabel(f"RMSE of the mean ({units[q]})")
                ax.legend()
            else:
                ax.loglog(s, np.abs(e) + 1e-12, ".", ms=2, alpha=0.3)
                lo, hi = max(s.min(), 1e-6), s.max()
                ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="|err| = sigma")
                ax.set_xlabel(f"predicted sigma ({units[q]})")
                ax.set_ylabel(f"|error| ({units[q]})")
                ax.set_title(f"Spearman {uq.spearman(e, s):.2f}")
                ax.legend()
            ax.set_title(f"{q}: " + ax.get_title())
        fig.tight_layout()
        path = f"{prefix}_{kind}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
