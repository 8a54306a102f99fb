"""The LLPR rows of the uncertainty experiment, the per-atom force metrics, and the energy-under-shift
diagnosis (issue 49). Called by ``run.py --part llpr``; writes ``runs/<name>/llpr.json``.

* LLPR of the single model (``si_single``: in distribution; ``shift_single``: trained on AIMD-NVT +
  Elastic like ``shift_deep``): covariance over the run's training frames, regularizer and scales
  fit on its validation frames (``jaxmat.train._llpr.fit_llpr``), scored once on its test frames,
  for r = 1, 2, 4, 8 feature-gradient directions and all of them (exact).
* Per atom: |force error| vs |sigma vector| (``jaxmat.train._per_atom``), for the LLPR runs and,
  where their models are on this machine, the ensembles.
* Energy under shift: per mlearn group of the scored frames, the signed mean and RMS energy error
  per atom, the RMS calibrated sigma, and the 68/95 % coverage before and after removing the
  group's mean error (an offset common to the group that no spread can see).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LLPR_RUNS = {"si_llpr": "si_single", "shift_llpr": "shift_single"}
DIRECTIONS = (1, 2, 4, 8, None)  # None: all of them (exact)


def model_dir(base: str, train) -> Path:
    """The best model of the single-model run ``base``; trained here when its weights are absent
    (the committed results.json of a run carries no weights: retrained into runs/<base>_model)."""
    for name in (base, f"{base}_model"):
        if (HERE / "runs" / name / "best_model").is_dir():
            return HERE / "runs" / name / "best_model"
    name = base if not (HERE / "runs" / base / "results.json").is_file() else f"{base}_model"
    train(name, config=base)
    return HERE / "runs" / name / "best_model"


def group_energy_table(frames, pred_e, err_e, sigma_e) -> dict:
    """{group: {n, mean_err, rmse, rms_sigma, cov68, cov95, cov68_offset, cov95_offset}} in meV/atom;
    ``*_offset``: coverage after subtracting the group's signed mean error."""
    groups = np.array([str(f.atoms.info.get("group", "(none)")) for f in frames])
    out = {}
    for g in sorted(set(groups)):
        m = groups == g
        e, s = 1000 * err_e[m], 1000 * sigma_e[m]
        row = {"n": int(m.sum()), "mean_err": float(e.mean()), "rmse": float(np.sqrt(np.mean(e**2))),
               "rms_sigma": float(np.sqrt(np.mean(s**2)))}
        for tag, x in (("", e), ("_offset", e - e.mean())):
            row[f"cov68{tag}"] = float(np.mean(np.abs(x) <= s))
            row[f"cov95{tag}"] = float(np.mean(np.abs(x) <= 2 * s))
        out[g] = row
    return out


def llpr_run(name: str, train) -> dict:
    from jaxmat import load_model
    from jaxmat.train import config_frames, load_config
    from jaxmat.train._llpr import fit_llpr, llpr_predict, llpr_report
    from jaxmat.models._llpr import default_layer, layer_size

    path = HERE / "runs" / name / "llpr.json"
    if path.is_file():
        return json.loads(path.read_text())
    base = LLPR_RUNS[name]
    cfg = load_config(HERE / "configs" / f"{base}.json")
    model = load_model(model_dir(base, train))
    frames = {w: config_frames(cfg, w) for w in ("train", "valid", "test")}
    P = layer_size(model.params, default_layer(model))
    out = {"base": base, "n_features": P, "rows": {}}
    for r in DIRECTIONS:
        llpr = fit_llpr(model, frames["train"], frames["valid"], force_directions=r or P)
        row = {"r": r or P, "calibration": llpr.calibration, "info": llpr.info}
        for split in ("valid", "test"):
            pred = llpr_predict(llpr, frames[split])
            rep = llpr_report(llpr, pred)
            row[split] = rep
            if split == "test" and "energy" in pred:
                ref, err, sig = pred["energy"]
                labelled = [f for f in frames[split] if f.energy is not None]
                row["energy_by_group"] = group_energy_table(labelled, None, err, llpr.spread_scale("energy") * sig)
        out["rows"][str(r or P)] = row
        print(f"{name} r={r or P}: test F Spearman {row['test']['forces']['raw']['spearman']:.3f}, per-atom Spearman "
              f"{row['test']['atoms']['raw']['spearman']:.3f}, AUROC {row['test']['atoms']['raw']['auroc_worst10']:.3f}",
              flush=True)
    (HERE / "runs" / name).mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float) + "\n")
    return out


def ensemble_atoms(name: str) -> dict | None:
    """Per-atom force metrics and the energy-by-group table of an ensemble run whose model is here
    (None when its weights are not on this machine)."""
    from jaxmat import load_model
    from jaxmat.train import config_frames, load_config
    from jaxmat.train._per_atom import atom_report
    from jaxmat.train._uq import member_predict
    from jaxmat.uncertainty import member_stats

    best = HERE / "runs" / name / "best_model"
    if not best.is_dir():
        return None
    path = HERE / "runs" / name / "atoms.json"
    if path.is_file():
        return json.loads(path.read_text())
    ens = load_model(best)
    frames = config_frames(load_config(HERE / "configs" / f"{name}.json"), "test")
    pred = member_predict(ens, frames)
    mean, std = member_stats(pred["forces"])
    scale = ens.spread_scale("forces") if ens.is_calibrated("forces") else None
    out = {"atoms": atom_report(pred["forces_ref"], mean - pred["forces_ref"], std, scale)}
    e_mean, e_std = member_stats(pred["energy"])
    labelled = [f for f in frames if f.energy is not None]
    out["energy_by_group"] = group_energy_table(labelled, None, e_mean - pred["energy_ref"],
                                                ens.spread_scale("energy") * e_std)
    path.write_text(json.dumps(out, indent=1, default=float) + "\n")
    return out


def report_lines(llpr: dict, atoms: dict) -> list[str]:
    """The markdown sections of the LLPR rows, the per-atom table and the energy-by-group table."""
    lines = ["## 5. LLPR on the single model (r = feature-gradient directions of the force spread)", "",
             "| run | r | captured F var (valid) | F Spearman | F AUROC10 | F cov 68 / 95 % (cal) | F mis. area (cal) | "
             "atom Spearman | atom AUROC10 | atom cov 68 / 95 % (cal) | E Spearman | E cov 68 / 95 % (cal) | "
             "scale E / F |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, res in llpr.items():
        for r, row in res["rows"].items():
            t = row["test"]
            f, fc, a, ac = t["forces"]["raw"], t["forces"]["calibrated"], t["atoms"]["raw"], t["atoms"]["calibrated"]
            e, ec = t["energy"]["raw"], t["energy"]["calibrated"]
            cal = row["calibration"]
            lines.append(f"| {name} | {r} | {row['info']['captured_force_variance']:.2f} | {f['spearman']:.3f} | "
                         f"{f['auroc_worst10']:.3f} | {fc['coverage_68']:.2f} / {fc['coverage_95']:.2f} | "
                         f"{fc['miscalibration_area']:.3f} | {a['spearman']:.3f} | {a['auroc_worst10']:.3f} | "
                         f"{ac['coverage_68']:.2f} / {ac['coverage_95']:.2f} | {e['spearman']:.2f} | "
                         f"{ec['coverage_68']:.2f} / {ec['coverage_95']:.2f} | {cal['energy']:.3g} / {cal['forces']:.3g} |")
    lines += ["", "## 6. Energy under shift, by group of the scored frames (meV/atom; calibrated sigma)", "",
              "| run | group | n | mean error | RMSE | RMS sigma | cov 68 / 95 % | cov 68 / 95 % without the group's "
              "mean error |", "|---|---|---|---|---|---|---|---|"]
    tables = {f"{n} (r={max(int(k) for k in res['rows'])})": res["rows"][str(max(int(k) for k in res["rows"]))]
              for n, res in llpr.items()}
    tables.update({n: a for n, a in atoms.items() if a})
    for name, res in tables.items():
        for g, row in res.get("energy_by_group", {}).items():
            lines.append(f"| {name} | {g} | {row['n']} | {row['mean_err']:+.1f} | {row['rmse']:.1f} | {row['rms_sigma']:.1f} | "
                         f"{row['cov68']:.2f} / {row['cov95']:.2f} | {row['cov68_offset']:.2f} / {row['cov95_offset']:.2f} |")
    return lines + [""]
