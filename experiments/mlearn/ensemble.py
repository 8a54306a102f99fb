"""Deep ensembles of trained mlearn runs: the mean of the members' predictions, on validation and test.

    python experiments/mlearn/ensemble.py [--root DIR] [--only NAME ...]

The ensembles and their members are declared in ensembles.json (written before the members' test
numbers were all known; a member is a run under runs/ with a best_model). On validation every
member must use the same training file, validation fraction and seed, so that the validation
frames are the same held-out frames for all of them; an ensemble with a member trained on the whole
split (``data.valid_fraction: 0``) has no held-out frames and is scored on the test split only
(its validation column reads "-"). All members must share the test file. Energies (per atom),
forces and stress are averaged over the members; the spread is reported too (mean over
frames/components of the members' standard deviation). The frames are the trainer's own
(``jaxmat.train.config_frames``). Writes ensembles.md and prints it. Predictions per member are
cached beside its best_model (predictions_{valid,test}.npz, git-ignored), refreshed when the best
model is newer. Best models are git-ignored, so a fresh checkout cannot rescore old ensembles:
``--only`` scores the named ones and keeps the other rows of ensembles.md as they were.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
KEYS = ("e_pred", "e_ref", "f_pred", "f_ref", "s_pred", "s_ref")


def member_predictions(root: Path, name: str, which: str) -> dict:
    """Predictions of run ``name``'s best model on its validation or test frames (cached)."""
    from jaxmat.models import load_model
    from jaxmat.train import config_frames, load_config, predict

    run = root / "runs" / name
    best, cache = run / "best_model", run / f"predictions_{which}.npz"
    if not (best / "config.json").is_file():
        raise FileNotFoundError(f"{name}: no best_model under {run} (train it with run.py first)")
    if cache.is_file() and cache.stat().st_mtime >= (best / "config.json").stat().st_mtime:
        with np.load(cache, allow_pickle=False) as z:
            return {k: z[k] for k in KEYS}
    cfg = load_config(root / "configs" / f"{name}.json")
    model = load_model(best)
    pred = predict(model, model.params, config_frames(cfg, which))
    np.savez(cache, **pred)
    return pred


def _split_key(root: Path, name: str):
    from jaxmat.train import load_config

    cfg = load_config(root / "configs" / f"{name}.json")
    d = cfg.data
    return (str(Path(d.train).resolve()), str(Path(d.valid).resolve()) if d.valid else None,
            d.valid_fraction, cfg.run.seed, str(Path(d.test).resolve()))


def has_validation(root: Path, members: list[str]) -> bool:
    """False where a member trained on every training frame (no held-out frames to score)."""
    from jaxmat.train import load_config

    data = [load_config(root / "configs" / f"{m}.json").data for m in members]
    return all(d.valid or d.valid_fraction > 0 for d in data)


def ensemble_metrics(root: Path, members: list[str], which: str) -> dict:
    """Error metrics (``error_metrics``) of the members' mean prediction, plus the mean spread:
    ``f_spread`` (eV/A) and ``e_spread`` (meV/atom), the members' standard deviation averaged."""
    from jaxmat.train import error_metrics

    if which == "valid" and not has_validation(root, members):
        raise ValueError(f"a member of {members} trained on every frame: no validation frames to score")
    keys = {m: _split_key(root, m) if which == "valid" else _split_key(root, m)[-1] for m in members}
    if len(set(keys.values())) != 1:
        raise ValueError(f"ensemble members use different data splits: {keys}")
    preds = [member_predictions(root, m, which) for m in members]
    for p in preds[1:]:
        for k in ("e_ref", "f_ref", "s_ref"):
            if not np.array_equal(p[k], preds[0][k]):
                raise ValueError(f"members disagree on the labels {k!r}: not the same frames")
    mean = {k: np.mean([p[k] for p in preds], axis=0) for k in ("e_pred", "f_pred", "s_pred")}
    mean.update({k: preds[0][k] for k in ("e_ref", "f_ref", "s_ref")})
    out = error_metrics(mean)
    out["f_spread"] = float(np.std([p["f_pred"] for p in preds], axis=0).mean())
    out["e_spread"] = float(np.std([p["e_pred"] for p in preds], axis=0).mean() * 1000.0)
    out["members_f_mae"] = [error_metrics(p)["f_mae"] for p in preds]
    return out


def _row(root: Path, name: str, members: list[str]) -> str:
    te = ensemble_metrics(root, members, "test")
    va = ensemble_metrics(root, members, "valid") if has_validation(root, members) else None
    valid = f"{va['e_mae']:.2f} / {va['f_mae']:.4f}" if va else "-"
    return (f"| {name} | {', '.join(members)} | {valid} | {te['e_mae']:.2f} | "
            f"{te['f_mae']:.4f} | {te['s_mae']:.3f} | {te['f_spread']:.4f} | "
            + ", ".join(f"{x:.4f}" for x in te["members_f_mae"]) + " |")


def _old_rows(path: Path) -> dict[str, str]:
    """The rows of an existing ensembles.md, by ensemble name."""
    if not path.is_file():
        return {}
    rows = [r for r in path.read_text().splitlines() if r.startswith("| ") and not r.startswith("| ensemble")]
    return {r.split("|")[1].strip(): r for r in rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", type=Path, default=HERE, help="folder with ensembles.json, configs/ and runs/")
    p.add_argument("--only", nargs="+", default=None,
                   help="score only these ensembles; keep the other rows of ensembles.md")
    args = p.parse_args(argv)
    root = args.root
    spec = json.loads((root / "ensembles.json").read_text())
    unknown = set(args.only or ()) - set(spec["ensembles"])
    if unknown:
        raise SystemExit(f"not declared in ensembles.json: {sorted(unknown)}")
    old = _old_rows(root / "ensembles.md")
    lines = ["| ensemble | members | valid E / F MAE | test E MAE (meV/atom) | test F MAE (eV/A) | "
             "test stress MAE (GPa) | test F spread (eV/A) | members' test F MAE |",
             "|---|---|---|---|---|---|---|---|"]
    for name, members in spec["ensembles"].items():
        if args.only is None or name in args.only:
            lines.append(_row(root, name, members))
            print(lines[-1], flush=True)
        elif name in old:
            lines.append(old[name])
        else:
            raise SystemExit(f"{name}: no row in ensembles.md to keep; score it with --only {name}")
    lines += ["", spec["note"]]
    (root / "ensembles.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
