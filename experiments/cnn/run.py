"""CNN on generated microstructures vs a phase-fraction-only baseline.

    python experiments/cnn/run.py [config.json] [--n-samples N] [--max-epochs N] [--out DIR]

Generates (once; cached in ``<out>/cache``) Cahn-Hilliard microstructures with their effective
conductivity, checks every label against the Hashin-Shtrikman bounds, splits train/valid/test with
a seed, fits (a) a polynomial in the phase fraction (degree chosen on validation) and (b) the CNN
head, and writes ``results.md`` (test MAE/RMSE/R^2), ``parity.png`` and ``examples.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from jaxmat.arrays import FitConfig, fit
from jaxmat.microstructure import CNN, load_or_generate

HERE = Path(__file__).resolve().parent
HS_RTOL = 2e-3  # pixel (resistor-network) discretisation may undershoot the continuum bound slightly


def metrics(pred, y):
    err = pred - y
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2))),
            "r2": float(1 - np.sum(err**2) / np.sum((y - y.mean()) ** 2))}


def fraction_baseline(f_train, y_train, f_val, y_val, degrees):
    best = None
    for d in degrees:
        coef = np.polyfit(f_train, y_train, d)
        mae = np.mean(np.abs(np.polyval(coef, f_val) - y_val))
        if best is None or mae < best[0]:
            best = (mae, d, coef)
    return best[1], best[2]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=str(HERE / "config.json"))
    p.add_argument("--n-samples", type=int, default=None)
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    cfg_path = Path(args.config).resolve()
    cfg = json.loads(cfg_path.read_text())
    out = Path(args.out).resolve() if args.out else cfg_path.parent
    out.mkdir(parents=True, exist_ok=True)
    dcfg = {**cfg["data"], **({"n_samples": args.n_samples} if args.n_samples else {})}
    n = dcfg.pop("n_samples")
    dcfg = {k: tuple(v) if isinstance(v, list) else v for k, v in dcfg.items()}
    data = load_or_generate(out / "cache", n, **dcfg)
    rel_low = (data.hs_lower - data.conductivity) / data.hs_lower
    rel_high = (data.conductivity - data.hs_upper) / data.hs_upper
    within = float(np.mean((rel_low <= HS_RTOL) & (rel_high <= HS_RTOL)))
    strict = float(np.mean((rel_low <= 0) & (rel_high <= 0)))
    print(f"{n} samples; within HS bounds: {strict:.1%} strictly, {within:.1%} within {HS_RTOL:.1%}; "
          f"worst undershoot {rel_low.max():.2e}, overshoot {rel_high.max():.2e}")

    perm = np.random.default_rng(cfg["split"]["seed"]).permutation(n)
    n_te, n_va = int(n * cfg["split"]["test"]), int(n * cfg["split"]["valid"])
    te, va, tr = perm[:n_te], perm[n_te : n_te + n_va], perm[n_te + n_va :]
    y, f, x = data.conductivity, data.fraction, data.images

    deg, coef = fraction_baseline(f[tr], y[tr], f[va], y[va], cfg["baseline_degrees"])
    base = metrics(np.polyval(coef, f[te]), y[te])
    fit_cfg = {**cfg["fit"], **({"max_epochs": args.max_epochs} if args.max_epochs else {})}
    model = CNN(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["cnn"].items()})
    # target "hs_position": the CNN predicts where the label sits between the Hashin-Shtrikman
    # bounds of the image's own phase fraction, t = (k - lower) / (upper - lower)
    lo, width = data.hs_lower, data.hs_upper - data.hs_lower
    to_t = (lambda k, i: (k - lo[i]) / width[i]) if cfg.get("target") == "hs_position" else (lambda k, i: k)  # noqa: E731
    from_t = (lambda t, i: lo[i] + t * width[i]) if cfg.get("target") == "hs_position" else (lambda t, i: t)  # noqa: E731
    res = fit(model, x[tr], to_t(y[tr], tr), x[va], to_t(y[va], va), FitConfig(**fit_cfg), log=print)
    pred = from_t(res.predict(model, x[te]), te)
    cnn = metrics(pred, y[te])
    n_params = int(sum(np.size(a) for a in __import__("jax").tree_util.tree_leaves(res.variables["params"])))
    lines = [f"{n} Cahn-Hilliard samples {dcfg}; split train/valid/test {len(tr)}/{len(va)}/{len(te)}; "
             f"labels within Hashin-Shtrikman bounds: {strict:.1%} strictly, {within:.1%} within {HS_RTOL:.1%} "
             f"(worst undershoot of the lower bound {rel_low.max():.1e}, relative)", "",
             "| model | test MAE | test RMSE | test R^2 | params | train time (s) |", "|---|---|---|---|---|---|",
             f"| phase-fraction polynomial (degree {deg}) | {base['mae']:.4f} | {base['rmse']:.4f} | {base['r2']:.4f} | {deg + 1} | 0 |",
             f"| CNN {cfg['cnn']}, target {cfg.get('target', 'conductivity')} | {cnn['mae']:.4f} | {cnn['rmse']:.4f} | {cnn['r2']:.4f} | {n_params:,} | {res.train_seconds:.0f} |"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"baseline": base, "cnn": cnn, "hs_within": within,
                                                  "hs_strict": strict, "history": res.history}, indent=1) + "\n")
    print("\n".join(lines))
    plots(out, f[te], y[te], np.polyval(coef, f[te]), pred, data)


def plots(out, f_te, y_te, base_pred, cnn_pred, data):
    from jaxmat.train._plots import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    lo, hi = y_te.min(), y_te.max()
    for ax, pred, name in zip(axes, (base_pred, cnn_pred), ("phase-fraction polynomial", "CNN")):
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.scatter(y_te, pred, s=5, alpha=0.6)
        ax.set(xlabel="effective conductivity (FV solve)", ylabel="predicted",
               title=f"{name}: MAE {np.mean(np.abs(pred - y_te)):.3f}")
    fig.tight_layout()
    fig.savefig(out / "parity.png", dpi=110)
    plt.close(fig)
    order = np.argsort(data.fraction)
    pick = order[np.linspace(0, len(order) - 1, 6).astype(int)]
    fig, axes = plt.subplots(1, 6, figsize=(13, 2.6))
    for ax, i in zip(axes, pick):
        ax.imshow(data.images[i], cmap="gray")
        ax.set(title=f"f={data.fraction[i]:.2f} k={data.conductivity[i]:.2f}\nsteps {data.steps[i]}", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(out / "examples.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
