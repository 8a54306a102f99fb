"""Learning curves and parity plots as PNG files (matplotlib, Agg backend)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from jaxmat.train._loss import EV_A3_TO_GPA


def _plt():
    import matplotlib  # deferred: matplotlib (optional, ~0.5 s to import), only when plots are written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(metrics_csv, out_png) -> Path:
    rows = list(csv.DictReader(open(metrics_csv)))
    if not rows:
        return Path(out_png)
    plt = _plt()
    ep = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        axes[0].semilogy(ep, [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows], label=label)
    axes[0].set(xlabel="epoch", ylabel="loss", title="loss")
    axes[0].legend()
    for ax, key, unit in ((axes[1], "e_mae", "meV/atom"), (axes[2], "f_mae", "eV/A")):
        for prefix, label in (("train_", "train"), ("val_", "validation")):
            vals = [float(r[prefix + key]) if r.get(prefix + key) not in (None, "") else np.nan for r in rows]
            ax.semilogy(ep, vals, label=label)
        ax.set(xlabel="epoch", ylabel=f"MAE ({unit})", title=f"{'energy' if key[0] == 'e' else 'force'} MAE")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


def parity_plots(pred: dict, out_png, title: str = "") -> Path:
    plt = _plt()
    panels = [("e", "energy (eV/atom)", 1.0), ("f", "force components (eV/A)", 1.0), ("s", "stress components (GPa)", EV_A3_TO_GPA)]
    panels = [p for p in panels if pred[f"{p[0]}_ref"].size]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4))
    axes = np.atleast_1d(axes)
    for ax, (k, label, scale) in zip(axes, panels):
        ref, prd = np.ravel(pred[f"{k}_ref"]) * scale, np.ravel(pred[f"{k}_pred"]) * scale
        lo, hi = min(ref.min(), prd.min()), max(ref.max(), prd.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.scatter(ref, prd, s=4, alpha=0.5)
        mae = np.abs(ref - prd).mean()
        ax.set(xlabel=f"DFT {label}", ylabel=f"predicted {label}", title=f"{title} MAE {mae:.4g}")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
