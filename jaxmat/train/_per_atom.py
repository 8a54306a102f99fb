"""Per-atom force uncertainty: the norm of each atom's force-error vector against the norm of its
predicted sigma vector, for ranking and flagging atoms (the MD watch uses the same norm).

For atom a with predicted component spreads s_a (3,) and force error e_a (3,): sigma_a = |s_a|,
err_a = |e_a|. Ranking (Spearman, AUROC of the worst 10 % atoms) needs no calibration. Coverage
treats the components as isotropic Gaussians of variance |s_a|^2 / 3, so that 3 |e_a|^2 / |s_a|^2
follows chi^2 with 3 degrees of freedom; the NLL-optimal scale of that model is
``jaxmat.uncertainty.nll_scale(err_a, sigma_a)`` (1 when the components are calibrated). Atoms whose
reference force is exactly 0 (perfect crystals, by symmetry) or whose sigma is 0 are dropped.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from jaxmat import uncertainty as uq

LEVELS = (0.6827, 0.9545)


def atom_norms(ref, err, sigma):
    """(err_a, sigma_a) (n_kept,) from (n, 3) references, errors and component sigmas."""
    ref, err, sigma = (np.asarray(a, np.float64).reshape(-1, 3) for a in (ref, err, sigma))
    e, s = np.linalg.norm(err, axis=1), np.linalg.norm(sigma, axis=1)
    keep = np.any(ref != 0, axis=1) & (s > 0) & np.isfinite(s) & np.isfinite(e)
    return e[keep], s[keep]


def atom_metrics(err_a, sigma_a) -> dict:
    """Spearman, AUROC (worst 10 % atoms), 68/95 % coverage (chi, 3 dof), the NLL-optimal scale
    and RMS sigma of per-atom norms; ``n`` atoms."""
    e, s = np.asarray(err_a, np.float64), np.asarray(sigma_a, np.float64)
    if e.size < 2:
        raise ValueError(f"per-atom metrics need at least 2 atoms with a non-zero reference and sigma, got {e.size}")
    out = {"n": int(e.size), "mae": float(np.mean(e)), "rms_sigma": float(np.sqrt(np.mean(s**2))),
           "spearman": uq.spearman(e, s), "scale": uq.nll_scale(e, s),
           "auroc_worst10": uq.flag_auroc(e, s, 0.1) if e.size >= 20 else float("nan")}
    for level in LEVELS:
        radius = s * np.sqrt(stats.chi2.ppf(level, 3) / 3)
        out[f"coverage_{round(100 * level)}"] = float(np.mean(e <= radius))
    return out


def atom_report(ref, err, sigma, scale: float | None) -> dict:
    """{"raw": atom_metrics, "calibrated": atom_metrics with the component scale (or None)}."""
    e, s = atom_norms(ref, err, sigma)
    return {"raw": atom_metrics(e, s), "calibrated": None if scale is None else atom_metrics(e, scale * s),
            "scale": scale}


def format_atom_report(r: dict) -> str:
    """Two table rows (raw, calibrated) of an ``atom_report``, in eV/A."""
    cols = (("mae", "MAE |dF|", ".4f"), ("rms_sigma", "RMS sig", ".4f"), ("spearman", "Spearman", ".3f"),
            ("auroc_worst10", "AUROC10", ".3f"), ("coverage_68", "cov68", ".3f"), ("coverage_95", "cov95", ".3f"),
            ("scale", "fit scale", ".3g"))
    lines = [f"{'per atom':8s} {'unit':8s} {'spreads':14s} " + " ".join(f"{h:>9s}" for _, h, _ in cols)]
    for which in ("raw", "calibrated"):
        m = r[which]
        label = "raw" if which == "raw" else ("not calibrated" if m is None else "x%.3g" % r["scale"])
        cells = [f"{'-':>9s}"] * len(cols) if m is None else [f"{m[k]:9{f}}" for k, _, f in cols]
        lines.append(f"{'|F| atom':8s} {'eV/A':8s} {label:14s} " + " ".join(cells))
    return "\n".join(lines)
