"""Training checkpoints: one msgpack file written atomically (temporary file + rename).

Holds params, EMA params, optimizer state, counters and history, so ``--resume`` continues
exactly where a killed run stopped. The best model is kept separately as a model bundle.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import flax.serialization
import jax
import numpy as np

from jaxmat._io import atomic_write
from jaxmat.errors import BundleError, CheckpointError
from jaxmat.models import check_weights

FORMAT = "jaxmat-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.msgpack"


def save_checkpoint(workdir, state: dict) -> Path:
    """``state``: dict of pytrees and scalars; numpy-converted and written atomically. Refuses
    (CheckpointError) parameters that are not finite: a checkpoint never holds NaN weights."""
    path = Path(workdir) / CHECKPOINT_FILE
    host = jax.tree_util.tree_map(np.asarray, flax.serialization.to_state_dict(state))
    for key in ("params", "ema"):
        try:
            check_weights(host[key], f"refusing to write {path}: {key}")
        except BundleError as err:
            raise CheckpointError(str(err)) from None
    blob = flax.serialization.msgpack_serialize({"format": FORMAT, "format_version": FORMAT_VERSION, "state": host})
    atomic_write(path, blob)
    return path


def load_checkpoint(workdir, template: dict) -> dict:
    """Restore into the structure of ``template`` (shapes must match)."""
    path = Path(workdir) / CHECKPOINT_FILE
    try:
        raw = flax.serialization.msgpack_restore(path.read_bytes())
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path} cannot be decoded: {err}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a jaxmat checkpoint")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {raw.get('format_version')} not supported")
    try:
        restored = flax.serialization.from_state_dict(template, raw["state"])
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{path} does not fit this run's model/optimizer: {err}") from None
    for a, b in zip(jax.tree_util.tree_leaves(template), jax.tree_util.tree_leaves(restored)):
        if np.shape(a) != np.shape(b):
            raise CheckpointError(f"{path} does not fit this run: shape {np.shape(b)} != {np.shape(a)}")
    return restored


def recover_dir(final: Path) -> str | None:
    """Finish or undo a ``replace_dir`` that a kill interrupted: if ``final`` is gone but its
    ``.old`` copy (complete: it was ``final``) is there, put it back; a ``.old`` beside a present
    ``final`` is removed. Returns what was done, or None."""
    old = final.with_name(final.name + ".old")
    if not old.exists():
        return None
    if final.exists():
        shutil.rmtree(old)
        return f"removed {old.name}"
    os.replace(old, final)
    return f"restored {final.name} from {old.name} (a kill came between its two renames)"


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written folder into place (the old one is removed only afterwards)."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
