"""mlearn Si/Mo: M3GNet from scratch and fine-tuned from the pretrained default, on this CPU.

    python experiments/mlearn/run.py [--minutes 20] [--only si_finetune ...]

Each config in configs/ trains in runs/<name>/ for at most --minutes of wall time per call
(resumable: calling again continues from the checkpoint), then the best model is evaluated on
the official test split. Writes results.md (table), and keeps each run's metrics.csv,
learning_curves.png and parity_test.png. Needs ../shared/data/mlearn.

runs/<name>/best_model and checkpoint.msgpack are git-ignored (1.5 and 6 MB a run). A best_model
that later runs start from (``init_from``) is committed with ``git add -f``: a session's machine
is not always handed to the next one, and session 23's was not, which took every trained model
of the restart chains (sessions 16-23) with it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from jaxmat.train import load_config, train_and_evaluate

HERE = Path(__file__).resolve().parent
PUBLISHED = {  # Zuo et al., J. Phys. Chem. A 124, 731 (2020): test MAE energy meV/atom, force eV/A
    "Si": {"GAP": (2.91, 0.07), "MTP": (2.21, 0.06)},
    "Mo": {"GAP": (2.24, 0.09), "MTP": (2.83, 0.09)},
}
HISTORY = {  # footnotes: config changes made while a run was under way (it resumed with the new file), unfinished runs
    "si_scratch": "epochs 1-109 ran with a 300-epoch cosine horizon (optim.epochs 300); resumed at epoch 109 "
                  "with the horizon shortened to 220 epochs to fit the CPU budget (the learning rate drops by ~0.7x there)",
    "mo_scratch": "epochs 1-55 ran with a 300-epoch cosine horizon (optim.epochs 300); resumed at epoch 55 (next session) "
                  "with the horizon shortened to 200 epochs to fit the CPU budget (the learning rate drops by ~0.9x there)",
    "mo_scratch_maxn6": "epochs 1-23 ran with a 300-epoch cosine horizon (the same schedule as mo_scratch, to compare "
                        "the two epoch by epoch); resumed at epoch 23 with the horizon shortened to 130 epochs to fit "
                        "the CPU budget (the learning rate drops by ~0.95x there)",
    "mo_scratch_equivariant": "epochs 1-25 ran with a 200-epoch cosine horizon (a 22-minute probe against mo_scratch); "
                              "resumed at epoch 25 with the horizon shortened to 100 epochs to fit the CPU budget "
                              "(the learning rate drops by ~0.9x there)",
    "mo_l7_s001_restart": "early stopping ended it after epoch 53 (best validation at epoch 13, the model evaluated); "
                          "a resume call made before commit a5f759c trained one more epoch (54, 61 s, no validation "
                          "improvement), which the 54 epochs and 33.1 min include",
    "si_l7_s001_full_restart2": "the wall cap stopped it after epoch 54 of its 55 (the missing epoch's learning "
                                "rate falls from 1.09e-5 to the cosine's floor, 1.0e-5); evaluated, and its energy "
                                "stage started, from epoch 54's model",
    "si_l7_s001_full_restart2_stage2": "the wall cap stopped it after epoch 27 of its 28 (the missing epoch's "
                                       "learning rate falls from 4.0e-6 to the cosine's floor, 3.0e-6); evaluated "
                                       "from epoch 27's model",
    "si_l7_s001_full_tb45_restart7_lr3e4_e3": "the wall cap (27 minutes) stopped it after epoch 29 of its 30 (the "
                                              "missing epoch is the last of the cosine, near its floor of "
                                              "3.0e-6); evaluated from epoch 29's model",
    "mo_l7_s001_full_tb45_nb4_from_r9e3": "cut off after epoch 8 of its 30 when the session-23 machine was shut "
                                          "down; its checkpoint and its parent's best_model (git-ignored) went with "
                                          "the machine, so it can neither resume nor be evaluated: metrics.csv only",
    "si_l7_s001_full_tb45_nb4_from_r6e3s2": "cut off after epoch 23 of its 30 when the session-23 machine was shut "
                                            "down; its checkpoint and its parent's best_model (git-ignored) went "
                                            "with the machine, so it can neither resume nor be evaluated: "
                                            "metrics.csv only",
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=float, default=20.0, help="wall-time budget per run and call")
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args(argv)
    for cfg_file in sorted((HERE / "configs").glob("*.json")):
        name = cfg_file.stem
        if args.only and name not in args.only:
            continue
        cfg = load_config(cfg_file)
        cfg.run.max_wall_minutes = args.minutes
        workdir = HERE / "runs" / name
        resume = (workdir / "checkpoint.msgpack").is_file()
        print(f"== {name} ({'resume' if resume else 'new'})", flush=True)
        train_and_evaluate(cfg, workdir, resume=resume)
    write_table()


SHIFT_FREE = ("mo_finetune", "mo_finetune_stage2", "mo_scratch", "mo_scratch_blocks4", "mo_scratch_equivariant",
              "mo_scratch_maxl7", "mo_scratch_maxn6", "mo_scratch_width128", "si_finetune", "si_scratch",
              "si_scratch_maxl7", "si_scratch_maxl7_stage2", "si_scratch_stage2")
SHIFT_NOTE = ("runs marked (s) were trained before commit c29c74f, when the trainer also updated M3GNet's "
              "per-structure energy shift (`energy_scale/shift`, matgl's data_mean, not extensive): scratch models "
              "learned 0.7-1.1 eV there, which mostly lands on the small surface slabs; their energies are not "
              "comparable with the other runs, which keep the shift frozen")


def _label(name: str) -> str:
    """A run's name in the tables, marked (s) if it trained the shift (SHIFT_NOTE)."""
    return f"{name} (s)" if name in SHIFT_FREE else name


GROUPS = ("AIMD-NVT", "Elastic", "Surface", "Vacancy")


def groups_table(run: Path) -> dict | None:
    """Test metrics per mlearn ``group`` of the run's best model (cached in test_by_group.json)."""
    from jaxmat.data import read_frames
    from jaxmat.models import load_model
    from jaxmat.train import metrics_by_group

    cache, best = run / "test_by_group.json", run / "best_model"
    if cache.is_file() and (not best.is_dir() or cache.stat().st_mtime >= (best / "config.json").stat().st_mtime):
        return json.loads(cache.read_text())
    cfg_file = HERE / "configs" / f"{run.name}.json"
    if not (best.is_dir() and cfg_file.is_file()):
        return None
    model = load_model(best)
    frames = read_frames(load_config(cfg_file).data.test)
    table = metrics_by_group(model, model.params, frames, "group")
    cache.write_text(json.dumps(table, indent=1) + "\n")
    return table


def write_table():
    lines = ["| run | epochs | wall (min) | test E MAE (meV/atom) | test F MAE (eV/A) | test stress MAE (GPa) |",
             "|---|---|---|---|---|---|"]
    for run in sorted((HERE / "runs").glob("*")):
        res = run / "results.json"
        if not res.is_file():
            continue
        test = json.loads(res.read_text()).get("test", {})
        rows = [r.split(",") for r in (run / "metrics.csv").read_text().splitlines()[1:]]
        walls = [float(r[-1]) for r in rows]
        # wall_s restarts at every resumed call: total = sum of the last time of each call
        total = sum(w for w, nxt in zip(walls, walls[1:] + [0.0]) if nxt < w)
        epochs = rows[-1][0] if rows else "0"
        lines.append(f"| {_label(run.name)} | {epochs} | {total / 60:.1f} | {test.get('e_mae', float('nan')):.2f} | "
                     f"{test.get('f_mae', float('nan')):.3f} | {test.get('s_mae', float('nan')):.3f} |")
    for el, pubs in PUBLISHED.items():
        for method, (e, f) in pubs.items():
            lines.append(f"| {el} {method} (Zuo et al. 2020) | | | {e} | {f} | |")
    lines += [""] + [f"* {name}: {text}" for name, text in HISTORY.items()] + [f"* {SHIFT_NOTE}"]
    lines += ["", "Deep ensembles of these runs (mean of the members' predictions): ensembles.md, from ensemble.py."]
    lines += ["", "Test MAE by mlearn group (energy meV/atom / forces eV/A; structures per group in brackets):", "",
              "| run | " + " | ".join(GROUPS) + " |", "|---|" + "---|" * len(GROUPS)]
    for run in sorted((HERE / "runs").glob("*")):
        table = groups_table(run) if (run / "results.json").is_file() else None  # not while a run is under way
        if table:
            lines.append(f"| {_label(run.name)} | " + " | ".join(
                f"{table[g]['e_mae']:.2f} / {table[g]['f_mae']:.3f} ({table[g]['n']})" if g in table else "-"
                for g in GROUPS) + " |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
