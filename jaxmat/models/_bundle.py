"""Versioned model bundles: a folder with ``config.json`` and ``params.msgpack`` (never pickle).

``config.json`` holds ``format``/``format_version``, the model family and its hyperparameters,
free-form ``metadata`` (origin, licence, training data) and the sha256 of the weights file, so a
truncated or altered weights file is detected before use.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import flax.serialization
import jax
import numpy as np

FORMAT = "jaxmat-bundle"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"


class BundleError(ValueError):
    """A model bundle that is missing, corrupt or incompatible with this jaxmat."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_bundle(path, family: str, hyperparameters: dict, params, metadata: dict | None = None) -> Path:
    """Write a bundle folder (weights first, then the config that certifies them)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    host = jax.tree_util.tree_map(lambda x: np.asarray(x), params)
    blob = flax.serialization.msgpack_serialize(flax.serialization.to_state_dict(host))
    atomic_write(path / PARAMS_FILE, blob)
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": family,
        "hyperparameters": hyperparameters,
        "metadata": metadata or {},
        "params_sha256": hashlib.sha256(blob).hexdigest(),
    }
    atomic_write(path / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    return path


def read_bundle(path) -> tuple[dict, dict]:
    """Read and verify a bundle folder; returns ``(config, params)`` with numpy leaves."""
    path = Path(path)
    cfg_file, par_file = path / CONFIG_FILE, path / PARAMS_FILE
    for f in (cfg_file, par_file):
        if not f.is_file():
            raise BundleError(f"{path} is not a jaxmat model bundle: {f.name} is missing")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{cfg_file} is not valid JSON: {err}") from None
    if config.get("format") != FORMAT:
        raise BundleError(f"{cfg_file}: format is {config.get('format')!r}, expected {FORMAT!r}")
    if config.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{cfg_file}: bundle format version {config.get('format_version')} is not supported "
            f"by this jaxmat (supports {FORMAT_VERSION})"
        )
    blob = par_file.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != config.get("params_sha256"):
        raise BundleError(f"{par_file} is corrupt: sha256 {digest} does not match config.json")
    try:
        params = flax.serialization.msgpack_restore(blob)
    except Exception as err:  # msgpack raises several types on bad data
        raise BundleError(f"{par_file} cannot be decoded: {err}") from None
    return config, params


def check_params(params, expected, where: str) -> None:
    """Raise BundleError unless ``params`` has exactly the tree structure and shapes of ``expected``."""
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    want = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
    missing, extra = sorted(set(want) - set(flat)), sorted(set(flat) - set(want))
    if missing or extra:
        raise BundleError(f"{where}: parameters do not match the model (missing {missing[:5]}, unexpected {extra[:5]})")
    for k, w in want.items():
        if tuple(np.shape(flat[k])) != tuple(w.shape):
            raise BundleError(f"{where}: parameter {k} has shape {np.shape(flat[k])}, expected {w.shape}")
