"""Uncertainty of deep and shallow M3GNet ensembles on mlearn Si: in distribution, under a
distribution shift, and during MD at rising temperature.

    python experiments/uncertainty/run.py [--part train|md|llpr|report|all] [--only RUN ...]

Protocol (fixed before any test number was seen; written into results.md):

* Data: ``../shared/data/mlearn/Si_{train,test}.extxyz``. Validation: 10 % of the training file,
  seeded (run.seed 0). Everything is chosen on validation; the test file is scored once per final
  model, at the end of its training run.
* Models: a small M3GNet trained from scratch (dim 32, 2 blocks, readout 32-32-1; ``configs/``),
  15 epochs, Adam(W) 5e-3 with 1 warm-up epoch and cosine decay, Huber loss, EMA 0.99, the best
  validation epoch kept. Deep ensemble: K = 5 members with init seeds 0..4, all training frames each,
  trained side by side in one vmapped step. Shallow ensemble: one body, K = 5 readout heads, loss of
  the heads' mean + CRPS of the heads on energy/atom and force components. A single model of the
  same architecture (init seed 0) is the cost and accuracy baseline.
* Calibration: one scale per quantity, NLL-optimal on the validation frames (ensemble.calibration
  "nll"); metrics are given before ("raw") and after ("calibrated"). Force components whose
  reference is exactly 0 (perfect-crystal Elastic frames) are excluded from NLL and calibration.
* Shift: train on the AIMD-NVT and Elastic groups of Si_train only; score on every Surface and
  Vacancy frame of Si_train and Si_test (none was trained or validated on).
* MD: 64-atom Si (cubic 2x2x2), Langevin (1 fs, friction 0.01/fs), temperature ramped linearly from
  300 K to 3000 K over ``MD_STEPS`` steps, with each in-distribution ensemble. Watched, as
  ``jaxmat md --max-force-std`` watches it: the largest per-atom calibrated force std (the norm of
  an atom's std vector). The threshold that "trips" is the largest such value of that ensemble on
  its validation frames: the most uncertain in-distribution atom it has seen. (Until 2026-12-06
  the experiment watched the largest component instead; the ensembles were retrained for it.)

Runs are resumable (``jaxmat train --resume`` semantics; finished runs are skipped). Writes
``results.md`` and the plots under ``plots/``; run folders under ``runs/`` (git-ignored models).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MLEARN = HERE.parents[1].parent / "shared" / "data" / "mlearn"
RUNS = ("si_single", "si_deep", "si_shallow", "shift_deep", "shift_shallow")
MD_STEPS, MD_T0, MD_T1, MD_LOG = 2000, 300.0, 3000.0, 10
MD_MEASURE = "largest per-atom norm of the calibrated force std vector"  # what jaxmat md --max-force-std watches


def prepare_shift_data() -> None:
    """runs/data/si_aimd_elastic.extxyz (train) and si_surface_vacancy.extxyz (score)."""
    import ase.io

    out = HERE / "runs" / "data"
    out.mkdir(parents=True, exist_ok=True)
    train = ase.io.read(MLEARN / "Si_train.extxyz", ":")
    test = ase.io.read(MLEARN / "Si_test.extxyz", ":")
    keep = [a for a in train if a.info["group"] in ("AIMD-NVT", "Elastic")]
    shift = [a for a in train + test if a.info["group"] in ("Surface", "Vacancy")]
    for name, frames in (("si_aimd_elastic", keep), ("si_surface_vacancy", shift)):
        path = out / f"{name}.extxyz"
        if not path.is_file():
            ase.io.write(path, frames)


def train(name: str, config: str | None = None) -> None:
    """Train run ``name`` (config ``configs/<config or name>.json``) unless its results exist."""
    from jaxmat.train import load_config, train_and_evaluate

    workdir = HERE / "runs" / name
    if (workdir / "results.json").is_file():
        print(f"{name}: done")
        return
    cfg = load_config(HERE / "configs" / f"{config or name}.json")
    t0 = time.perf_counter()
    train_and_evaluate(cfg, workdir, resume=(workdir / "checkpoint.msgpack").is_file())
    (workdir / "wall.json").write_text(json.dumps({"train_and_evaluate_s": time.perf_counter() - t0}) + "\n")


def epoch_seconds(name: str) -> float:
    """Median wall time of one training epoch (from metrics.csv)."""
    rows = list(csv.DictReader(open(HERE / "runs" / name / "metrics.csv")))
    wall = np.array([float(r["wall_s"]) for r in rows])
    return float(np.median(np.diff(np.concatenate([[0.0], wall]))[1:])) if len(wall) > 1 else float(wall[0])


def md_threshold(model, name: str) -> float:
    """The largest per-atom calibrated force std (norm of the atom's std vector, as the MD watch
    ``--max-force-std`` reads it) over the run's validation frames, eV/A."""
    from jaxmat.train import config_frames, load_config
    from jaxmat.train import predict_members

    frames = config_frames(load_config(HERE / "configs" / f"{name}.json"), "valid")
    pred = predict_members(model, frames)
    scale = model.calibration.get("forces")
    if scale is None:  # stored as null: the run's validation frames had no force labels
        raise SystemExit(f"{name}: the ensemble's forces spread is not calibrated; the MD threshold needs it")
    std = scale * np.std(pred["forces"], axis=0, ddof=1)  # (n_atoms_total, 3)
    return float(np.linalg.norm(std, axis=-1).max())


def md_ramp(name: str) -> dict:
    """Langevin MD of Si64 from MD_T0 to MD_T1; the largest per-atom force std norm per logged step."""
    from ase import units
    from ase.build import bulk
    from ase.md.langevin import Langevin

    from jaxmat import load_model
    from jaxmat.calculators import JaxmatCalculator
    from jaxmat.md import thermalize

    from llpr_rows import model_dir

    path = HERE / "runs" / name / "md_ramp.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    if done.get("measure") == MD_MEASURE:
        return done
    model = load_model(model_dir(name, train))
    threshold = md_threshold(model, name)
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat((2, 2, 2))
    calc = JaxmatCalculator(model)
    atoms.calc = calc
    rng = np.random.default_rng(0)
    thermalize(atoms, MD_T0, rng)
    dyn = Langevin(atoms, 1.0 * units.fs, temperature_K=MD_T0, friction=0.01 / units.fs, rng=rng)
    log = {"step": [], "target_K": [], "temperature_K": [], "max_force_std": []}
    t0 = time.perf_counter()
    for step in range(0, MD_STEPS + 1, MD_LOG):
        target = MD_T0 + (MD_T1 - MD_T0) * step / MD_STEPS
        dyn.set_temperature(temperature_K=target)
        if step:
            dyn.run(MD_LOG)
        atoms.get_forces()
        for k, v in zip(log, (step, target, atoms.get_temperature(), float(np.linalg.norm(calc.results["forces_std"], axis=-1).max()))):
            log[k].append(v)
    seconds = time.perf_counter() - t0
    trips = [s for s, v in zip(log["step"], log["max_force_std"]) if v > threshold]
    out = {**log, "measure": MD_MEASURE, "threshold": threshold, "trip_step": trips[0] if trips else None,
           "trip_target_K": log["target_K"][log["step"].index(trips[0])] if trips else None,
           "ms_per_step": 1000 * seconds / MD_STEPS}
    path.write_text(json.dumps(out) + "\n")
    return out


def md_plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        line, = ax.plot(r["step"], r["max_force_std"], label=f"{name} (max F std)")
        ax.axhline(r["threshold"], color=line.get_color(), ls="--", lw=1, label=f"{name} threshold")
        if r["trip_step"] is not None:
            ax.axvline(r["trip_step"], color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("MD step (1 fs); target T rises linearly 300 K -> 3000 K")
    ax.set_ylabel("max calibrated force std (eV/A)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    (HERE / "plots").mkdir(exist_ok=True)
    fig.savefig(HERE / "plots" / "md_ramp.png", dpi=110)
    plt.close(fig)


def copy_plots() -> None:
    (HERE / "plots").mkdir(exist_ok=True)
    for name in RUNS:
        for png in (HERE / "runs" / name).glob("uncertainty_test_*.png"):
            shutil.copy(png, HERE / "plots" / f"{name}_{png.name.replace('uncertainty_test_', '')}")


def report(md: dict) -> str:
    """results.md: the protocol, then one table per part."""
    res = {n: json.loads((HERE / "runs" / n / "results.json").read_text())
           for n in RUNS if (HERE / "runs" / n / "results.json").is_file()}
    doc = (__doc__.split("Protocol")[1].split("Runs are resumable")[0]).strip()
    lines = ["# Uncertainty: deep vs shallow ensembles on mlearn Si", "",
             "Reproduce: `python experiments/uncertainty/run.py` (about 2 h of one core).", "", "## Protocol", "", doc, ""]

    def block(title, names, splits=("test",)):
        lines.extend([f"## {title}", "",
                      "| run | scored on | E MAE meV/atom | F MAE eV/A | which | F RMS sigma | F NLL | F Spearman | "
                      "F AUROC worst 10 % | F mis. area | F cov 68 / 95 % | E NLL | E Spearman | E mis. area | scale E / F |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"])
        for n in names:
            for split in splits:
                if n not in res:
                    continue
                r = res[n][split]
                u = r.get("uncertainty")
                if not u:
                    lines.append(f"| {n} | {split} | {r['e_mae']:.2f} | {r['f_mae']:.4f} | - | - | - | - | - | - | - | - | "
                                 "- | - | - |")
                    continue
                for which in ("raw", "calibrated"):
                    f, e = u["forces"][which], u["energy"][which]
                    lines.append(
                        f"| {n} | {split} | {r['e_mae']:.2f} | {r['f_mae']:.4f} | {which} | {f['rms_sigma']:.3f} | "
                        f"{f['nll']:.3f} | {f['spearman']:.3f} | "
                        f"{f['auroc_worst10']:.3f} | {f['miscalibration_area']:.3f} | {f['coverage_68']:.2f} / "
                        f"{f['coverage_95']:.2f} | {e['nll']:.2f} | {e['spearman']:.2f} | "
                        f"{e['miscalibration_area']:.3f} | {u['energy']['scale']:.3g} / {u['forces']['scale']:.3g} |")
        lines.append("")

    block("1. In distribution: trained on Si train, scored on Si test (25 frames)", ("si_single", "si_deep", "si_shallow"))
    block("2. Distribution shift: trained on AIMD-NVT + Elastic, scored on all Surface + Vacancy frames (78)",
          ("shift_deep", "shift_shallow"), ("valid", "test"))
    lines.extend(["## 3. MD at rising temperature (Si64, 300 K -> 3000 K over "
                  f"{MD_STEPS} steps of 1 fs)", "", "| ensemble | threshold eV/A | first step above | target T there | "
                  "ms per MD step |", "|---|---|---|---|---|"])
    for n, r in md.items():
        trip = "never" if r["trip_step"] is None else str(r["trip_step"])
        temp = "-" if r["trip_target_K"] is None else f"{r['trip_target_K']:.0f} K"
        lines.append(f"| {n} | {r['threshold']:.3f} | {trip} | {temp} | {r['ms_per_step']:.1f} |")
    lines.extend(["", "Plot: `plots/md_ramp.png`. Test-set reliability and error-vs-sigma plots: "
                  "`plots/<run>_reliability.png`, `plots/<run>_scatter.png`.", "",
                  "## 4. Cost of training (this run, one core each)", "", "| run | s per epoch | x single |", "|---|---|---|"])
    base = epoch_seconds("si_single") if "si_single" in res else float("nan")
    for n in ("si_single", "si_deep", "si_shallow"):
        if n in res:
            lines.append(f"| {n} | {epoch_seconds(n):.0f} | {epoch_seconds(n) / base:.2f} |")
    lines.append("")
    from llpr_rows import LLPR_RUNS, report_lines

    llpr = {n: json.loads((HERE / "runs" / n / "llpr.json").read_text()) for n in LLPR_RUNS
            if (HERE / "runs" / n / "llpr.json").is_file()}
    atoms = {n: json.loads((HERE / "runs" / n / "atoms.json").read_text()) for n in RUNS
             if (HERE / "runs" / n / "atoms.json").is_file()}
    if llpr or atoms:
        from llpr_rows import goals_lines

        lines.extend(goals_lines(llpr, res, atoms))
        lines.extend(report_lines(llpr, atoms))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("train", "md", "llpr", "report", "all"), default="all")
    parser.add_argument("--only", nargs="*", default=None, help="runs to train (default: all)")
    args = parser.parse_args(argv)
    prepare_shift_data()
    if args.part in ("train", "all"):
        for name in args.only or RUNS:
            train(name)
    md = {}
    if args.part in ("md", "all"):
        for name in ("si_deep", "si_shallow"):
            md[name] = md_ramp(name)
        md_plot(md)
    if args.part in ("llpr", "all"):  # LLPR rows, per-atom metrics, energy under shift (llpr_rows.py)
        from llpr_rows import LLPR_RUNS, ensemble_atoms, llpr_run, shift_volume_table

        for name in LLPR_RUNS:
            llpr_run(name, train)
        shift_volume_table()
        for name in RUNS[1:]:
            ensemble_atoms(name, train)
    if args.part in ("report", "all"):
        for name in ("si_deep", "si_shallow"):
            path = HERE / "runs" / name / "md_ramp.json"
            if path.is_file():
                md[name] = json.loads(path.read_text())
        copy_plots()
        text = report(md)
        (HERE / "results.md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
