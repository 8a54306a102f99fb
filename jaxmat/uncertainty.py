"""Uncertainty metrics and calibration: pure functions of errors and predicted spreads.

Every function takes ``err`` (prediction - reference) and ``sigma`` (predicted standard
deviation, same shape, same unit) as array-likes and returns floats or numpy arrays; they work
for energies (eV/atom), force components (eV/A) or stress components alike. Conventions:

* the spread of a K-member ensemble is the sample standard deviation over members (ddof=1,
  ``member_stats``); a calibrated ensemble multiplies it by a scale ``s``;
* entries whose reference is exactly 0 (forces on the atoms of a perfect crystal, by symmetry) or
  whose sigma is 0 say nothing about calibration and are dropped by ``usable`` before fitting or
  scoring (about a fifth of the mlearn Si test force components are such zeros).
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from jaxmat.errors import ConfigError

#: central intervals reported by ``calibration_metrics`` (1 and 2 sigma of a Gaussian)
LEVELS = (0.6827, 0.9545)
#: the smallest committee the Musil/Imbalzano alpha is defined for (its factor (M - 3) / (M - 1))
MUSIL_MIN_MEMBERS = 4


def check_musil_size(n_members: int, where: str, alternative: str) -> None:
    """ConfigError unless a committee of ``n_members`` can be calibrated by ``musil_alpha``: the one
    rule behind the training config (``ensemble.calibration``) and ``jaxmat ensemble --method``.
    ``where`` names the setting, ``alternative`` how to ask for the NLL scale instead."""
    if n_members < MUSIL_MIN_MEMBERS:
        raise ConfigError(f"{where}: the Musil/Imbalzano calibration needs an ensemble of at least {MUSIL_MIN_MEMBERS} "
                          f"members (its estimator is undefined below), this one has {n_members}; use {alternative}")


def member_stats(values, axis: int = 0):
    """(mean, std) over the member axis; std is the sample standard deviation (ddof=1)."""
    values = np.asarray(values, np.float64)
    return values.mean(axis=axis), values.std(axis=axis, ddof=1)


#: a sigma below this fraction of the median positive sigma is round-off, not a spread (see ``usable``)
SIGMA_FLOOR = 1e-4


def usable(ref, err, sigma):
    """Flat (err, sigma) of the entries with a non-zero reference and a positive finite sigma that is
    not round-off: components every member predicts alike by symmetry (the xz, xy stress of a slab,
    spread ~1e-18 eV/A^3 in float64) would otherwise dominate an NLL scale (err / sigma ~ 1e15), so
    a sigma below ``SIGMA_FLOOR`` times the median positive sigma of the same array is dropped."""
    ref, err, sigma = (np.asarray(a, np.float64).ravel() for a in (ref, err, sigma))
    keep = (ref != 0) & (sigma > 0) & np.isfinite(sigma) & np.isfinite(err)
    if keep.any():
        keep &= sigma > SIGMA_FLOOR * np.median(sigma[keep])
    return err[keep], sigma[keep]


def _flat(err, sigma):
    err, sigma = np.asarray(err, np.float64).ravel(), np.asarray(sigma, np.float64).ravel()
    if err.shape != sigma.shape:
        raise ValueError(f"err and sigma must have the same size, got {err.size} and {sigma.size}")
    if err.size == 0:
        raise ValueError("no entries to score (after dropping zero references and zero sigmas)")
    if np.any(sigma <= 0) or not np.all(np.isfinite(sigma)):
        raise ValueError("sigma must be positive and finite (use jaxmat.uncertainty.usable first)")
    return err, sigma


def gaussian_nll(err, sigma) -> float:
    """Mean negative log-likelihood of the errors under N(0, sigma^2) (in nats; lower is better)."""
    err, sigma = _flat(err, sigma)
    return float(np.mean(0.5 * np.log(2 * np.pi * sigma**2) + 0.5 * (err / sigma) ** 2))


def crps(err, sigma) -> float:
    """Mean continuous ranked probability score of N(mean, sigma^2) for the reference (unit of err)."""
    err, sigma = _flat(err, sigma)
    z = err / sigma
    pdf, cdf = np.exp(-0.5 * z**2) / np.sqrt(2 * np.pi), special.ndtr(z)
    return float(np.mean(sigma * (z * (2 * cdf - 1) + 2 * pdf - 1 / np.sqrt(np.pi))))


def spearman(err, sigma) -> float:
    """Spearman rank correlation of |err| and sigma (1: sigma ranks the errors perfectly)."""
    err, sigma = _flat(err, sigma)
    return float(stats.spearmanr(np.abs(err), sigma).statistic)


def coverage(err, sigma, level: float) -> float:
    """Fraction of errors inside the central ``level`` interval of N(0, sigma^2) (ideal: level)."""
    err, sigma = _flat(err, sigma)
    z = special.ndtri(0.5 + level / 2)
    return float(np.mean(np.abs(err) <= z * sigma))


def miscalibration_area(err, sigma, n_levels: int = 101) -> float:
    """Area between the observed and the ideal coverage of central intervals, over levels 0..1
    (0: calibrated; 0.5 at most). Over- and under-confidence both count."""
    err, sigma = _flat(err, sigma)
    levels = np.linspace(0, 1, n_levels)
    # the level at which each error first falls inside its interval
    needed = 2 * special.ndtr(np.abs(err) / sigma) - 1
    observed = np.searchsorted(np.sort(needed), levels, side="right") / err.size
    return float(np.trapezoid(np.abs(observed - levels), levels))


def reliability_curve(err, sigma, n_bins: int = 10):
    """(rms_sigma, rmse, count) per bin of equal count, sorted by sigma; calibrated: rmse = rms_sigma."""
    err, sigma = _flat(err, sigma)
    order = np.argsort(sigma)
    bins = [b for b in np.array_split(order, min(n_bins, err.size)) if b.size]
    rms_sigma = np.array([np.sqrt(np.mean(sigma[b] ** 2)) for b in bins])
    rmse = np.array([np.sqrt(np.mean(err[b] ** 2)) for b in bins])
    return rms_sigma, rmse, np.array([b.size for b in bins])


def auroc(score, positive) -> float:
    """Area under the ROC curve of ``score`` separating ``positive`` (bool) entries from the rest
    (0.5: no better than chance; ties count half; Mann-Whitney form)."""
    score, positive = np.asarray(score, np.float64).ravel(), np.asarray(positive, bool).ravel()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("auroc needs both positive and negative entries")
    ranks = stats.rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def flag_auroc(err, sigma, fraction: float = 0.1) -> float:
    """How well sigma flags the worst ``fraction`` of |err| (AUROC of sigma for those entries)."""
    err, sigma = _flat(err, sigma)
    threshold = np.quantile(np.abs(err), 1 - fraction)
    return auroc(sigma, np.abs(err) > threshold)


def nll_scale(err, sigma) -> float:
    """The scale s minimising the Gaussian NLL of err under N(0, (s sigma)^2): sqrt(mean(err^2/sigma^2))."""
    err, sigma = _flat(err, sigma)
    return float(np.sqrt(np.mean((err / sigma) ** 2)))


def musil_alpha(err, sigma, n_members) -> float:
    """Calibration factor of a sub-sampled committee (Musil et al., JCTC 15, 906 (2019); Imbalzano et
    al., JCP 154, 074102 (2021)): alpha^2 = mean(-1/M + (M-3)/(M-1) err^2/sigma^2), with sigma the
    committee's ddof=1 spread and err its mean's error, both over the M members that did not train
    on the entry. ``n_members``: M (an int, or one per entry). Needs M >= 4 (the estimator is
    undefined below)."""
    err, sigma = _flat(err, sigma)
    M = np.broadcast_to(np.asarray(n_members, np.float64).ravel() if np.ndim(n_members) else float(n_members),
                        err.shape)
    if np.any(M < MUSIL_MIN_MEMBERS):
        raise ValueError(f"the Musil/Imbalzano alpha needs a committee of at least {MUSIL_MIN_MEMBERS} members, got {int(M.min())}")
    alpha2 = float(np.mean(-1.0 / M + (M - 3) / (M - 1) * (err / sigma) ** 2))
    if alpha2 <= 0:
        raise ValueError(f"the Musil/Imbalzano alpha^2 is {alpha2:.3g} <= 0: the committee spread is far larger "
                         "than its errors on these frames; use the NLL scale instead")
    return float(np.sqrt(alpha2))


def calibration_metrics(err, sigma) -> dict:
    """NLL, CRPS, Spearman, flagging AUROC (worst 10 %), miscalibration area, 68/95 % coverage,
    mean |err| and RMS sigma, and the NLL-optimal scale (1 when calibrated); ``n`` entries."""
    err, sigma = _flat(err, sigma)
    out = {"n": int(err.size), "mae": float(np.mean(np.abs(err))), "rms_sigma": float(np.sqrt(np.mean(sigma**2))),
           "nll": gaussian_nll(err, sigma), "crps": crps(err, sigma), "spearman": spearman(err, sigma),
           "miscalibration_area": miscalibration_area(err, sigma), "scale": nll_scale(err, sigma)}
    for level in LEVELS:
        out[f"coverage_{round(100 * level)}"] = coverage(err, sigma, level)
    out["auroc_worst10"] = flag_auroc(err, sigma, 0.1) if err.size >= 20 else float("nan")
    return out
