"""Guards of a training run: clean-up after a kill, the config a resume may change, the health
of every step (finite loss, gradient, weights), freeze prefixes that name real parameters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.errors import CheckpointError, ConfigError, TrainingError
from jaxmat.train._checkpoint import CHECKPOINT_FILE, recover_dir
from jaxmat.train._optim import param_path
from jaxmat.train._report import write_json


def remove_orphans(workdir: Path, log) -> None:
    """Clean up after a killed run: finish an interrupted best-model swap (``recover_dir``), then
    delete half-written temporary files (the complete files they were to replace are untouched)."""
    done = recover_dir(workdir / "best_model")
    if done:
        log(done)
    leftovers = sorted(workdir.glob(f".{CHECKPOINT_FILE}.*.tmp")) + sorted(workdir.glob("best_model.tmp"))
    for path in leftovers:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if leftovers:
        log(f"removed {len(leftovers)} file(s) a killed run left half-written: {', '.join(p.name for p in leftovers)}")


#: fields a resumed run may not change: they decide which frames form which batch, and the precision
REPLAY_FIELDS = {"data": ("train", "valid", "valid_fraction", "graphs_per_batch"), "run": ("seed", "init_seed", "dtype"),
                 "ensemble": ("kind", "size", "bootstrap", "heads")}


def record_config(cfg, workdir: Path, log, resumed: bool, write: bool = True) -> None:
    """Record the run's config (``write``: process 0 of a multi-process run); on resume (after the
    checkpoint was accepted) refuse a change to ``REPLAY_FIELDS`` (CheckpointError) and name every
    other change."""
    path = workdir / "config.json"
    new = cfg.to_dict()
    if resumed and path.is_file():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        changed = {(sec, k): (old[sec].get(k), v) for sec, fields in new.items() for k, v in fields.items()
                   if isinstance(old.get(sec), dict) and old[sec].get(k) != v}
        if new["ensemble"]["kind"] == "none" and old.get("ensemble", {}).get("kind") == "none":
            # one model: the other ensemble fields mean nothing (ensemble.size was 5 there before it became None)
            changed = {key: v for key, v in changed.items() if key[0] != "ensemble"}
        text = lambda keys: "; ".join(f"{sec}.{k}: {changed[sec, k][0]!r} -> {changed[sec, k][1]!r}"  # noqa: E731
                                      for sec, k in keys)
        fixed = [key for key in changed if key[1] in REPLAY_FIELDS.get(key[0], ())]
        if fixed:
            raise CheckpointError(
                f"{workdir} cannot resume with {text(fixed)}: these decide the data split, the batches or the "
                f"precision of the checkpointed run. Resume with its config ({path}) or start a new workdir")
        if changed:
            log("resumed with a changed config: " + text(changed))
    if write:
        write_json(path, new)


def saved_state(workdir: Path) -> str:
    best = "best_model/ (the best epoch so far)" if (workdir / "best_model").is_dir() else "no best_model yet"
    return f"{workdir} holds the last good state ({CHECKPOINT_FILE}, --resume continues from it) and {best}"


def all_finite(tree):
    """True (a jax bool) if every entry of every leaf is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def healthy(health) -> bool:
    return bool(np.isfinite(health["loss"]) and health["gradient"] and health["parameters"])


def divergence(health, step, where, group, frames, learning_rate, workdir) -> TrainingError:
    """The error for a step whose loss, gradient or updated weights were not finite. ``step``: steps
    taken before it; ``where``: (epoch, batch, batches in the epoch), counted from 0; ``group``: the
    batch's frame indices into ``frames``; ``learning_rate``: optim.learning_rate."""
    epoch, k, n_batches = where
    bad = ([f"the loss is {float(health['loss'])}"] if not np.isfinite(health["loss"]) else []) + [
        f"the {name} after the update hold NaN or inf" if name == "parameters" else f"the {name} holds NaN or inf"
        for name in ("gradient", "parameters") if not bool(health[name])]
    sources = ", ".join(frames[i].source for i in group[:8])
    return TrainingError(
        f"training diverged at step {int(step) + 1} (epoch {epoch + 1}, batch {k + 1} of {n_batches}): "
        f"{'; '.join(bad)}. The step was not applied and nothing non-finite was saved: {saved_state(workdir)}. "
        f"Likely causes: a learning rate ({learning_rate:g}) too high for this model (try 10x lower, "
        f"a longer warm-up or gradient clipping), labels in the wrong unit, or a structure the model cannot "
        f"evaluate. This batch holds {sources}")


def check_freeze(params, prefixes, constants=()) -> None:
    """A freeze prefix must name at least one parameter (a typo would otherwise freeze nothing)."""
    paths = [param_path(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    unknown = [p for p in prefixes if not any(path.startswith(p) for path in paths)]
    groups = sorted({path.split("/")[0] for path in paths})
    if unknown or "" in prefixes:
        raise ConfigError(f"config: model.freeze {unknown or ['']} names no parameter of this model; parameter "
                          f"paths start with one of {groups} (e.g. 'conv_', 'energy_scale/element_refs')")
    if prefixes and all(any(path.startswith(p) for p in list(prefixes) + list(constants)) for path in paths):
        raise ConfigError(f"config: model.freeze {list(prefixes)} freezes every parameter: nothing would be trained")


def check_ensemble_groups(ens, params) -> None:
    """``ensemble.heads`` (shallow) and ``ensemble.reinit`` must name top-level parameter groups of
    the model (``params``: one member's tree); a typo would otherwise stack or redraw nothing."""
    groups = sorted(params)
    for field, names in (("heads", ens.heads if ens.kind == "shallow" else []),
                         ("reinit", ens.reinit if ens.kind != "none" else [])):
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ConfigError(f"config: ensemble.{field} {unknown} names no parameter group of this model: "
                              f"{field} are whole top-level groups, one of {groups} (e.g. [\"readout\"])")
