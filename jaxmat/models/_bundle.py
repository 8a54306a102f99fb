"""Versioned model bundles: a folder with ``config.json`` and ``params.msgpack`` (never pickle).

``config.json`` holds ``format``/``format_version``, the model family and its hyperparameters,
free-form ``metadata`` (origin, licence, training data), the sha256 of the weights file and (format
2) ``config_sha256``, the sha256 of the canonical JSON of family, hyperparameters and weights hash.
A truncated or altered weights file and a hand-edited hyperparameter (cutoff, element order) are
both detected before use; ``metadata`` may be edited freely. Ensembles (format 3) add an
``ensemble`` section (kind, size K, the stacked parameter groups, the calibration scales), also
covered by ``config_sha256``; single models are still written as format 2. LLPR bundles (format 4,
``jaxmat.models._llpr``) add an ``llpr`` section, also covered, and the weights group ``llpr``. Weights must be finite floating-point
arrays. Every failure to read, decode or verify a bundle is a ``BundleError`` naming the file.
Format-1 bundles (no ``config_sha256``) still load, with a warning to re-save them.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import flax.serialization
import jax
import numpy as np

from jaxmat._io import atomic_write
from jaxmat.errors import BundleError

FORMAT = "jaxmat-bundle"
FORMAT_VERSION = 2
ENSEMBLE_FORMAT_VERSION = 3
LLPR_FORMAT_VERSION = 4
SUPPORTED_VERSIONS = (1, 2, 3, 4)
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"


def config_digest(config: dict) -> str:
    """sha256 of the canonical JSON of the parts of a bundle config that decide its numbers."""
    core = {k: config.get(k) for k in ("model", "hyperparameters", "params_sha256")}
    if "ensemble" in config:  # format 3
        core["ensemble"] = config["ensemble"]
    if "llpr" in config:  # format 4 (jaxmat.models._llpr)
        core["llpr"] = config["llpr"]
    return hashlib.sha256(json.dumps(core, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_weights(params, where: str) -> None:
    """Raise BundleError unless every leaf of ``params`` is a finite floating-point array."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if not leaves:
        raise BundleError(f"{where}: holds no weights")
    for key, leaf in leaves:
        name = jax.tree_util.keystr(key)
        arr = np.asarray(leaf) if isinstance(leaf, (np.ndarray, np.generic, jax.Array)) else None
        if arr is None:
            raise BundleError(f"{where}: weight {name} is a {type(leaf).__name__}, not an array")
        if arr.dtype.kind != "f":
            raise BundleError(f"{where}: weight {name} has dtype {arr.dtype}; weights must be floating point")
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise BundleError(f"{where}: weight {name} has {bad} non-finite value(s) (NaN or inf)")


def save_bundle(path, family: str, hyperparameters: dict, params, metadata: dict | None = None,
                ensemble: dict | None = None, llpr: dict | None = None) -> Path:
    """Write a bundle folder (weights first, then the config that certifies them). Non-finite
    weights are refused (BundleError): a bundle never holds NaN. ``ensemble``: the section of an
    ensemble bundle (``Ensemble.ensemble_config()``; format 3)."""
    path = Path(path)
    host = jax.tree_util.tree_map(lambda x: np.asarray(x), params)
    check_weights(host, f"model bundle {path}")
    if path.exists() and not path.is_dir():
        raise BundleError(f"cannot save a model bundle to {path}: it is a file, and a bundle is a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BundleError(f"cannot save a model bundle to {path}: {err}") from None
    blob = flax.serialization.msgpack_serialize(flax.serialization.to_state_dict(host))
    atomic_write(path / PARAMS_FILE, blob)
    config = {
        "format": FORMAT,
        "format_version": LLPR_FORMAT_VERSION if llpr is not None else (
            FORMAT_VERSION if ensemble is None else ENSEMBLE_FORMAT_VERSION),
        "model": family,
        "hyperparameters": hyperparameters,
        "metadata": metadata or {},
        "params_sha256": hashlib.sha256(blob).hexdigest(),
    }
    if ensemble is not None:
        config["ensemble"] = ensemble
    if llpr is not None:
        config["llpr"] = llpr
    config["config_sha256"] = config_digest(json.loads(json.dumps(config)))
    atomic_write(path / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    return path


def read_bundle(path) -> tuple[dict, dict]:
    """Read and verify a bundle folder; returns ``(config, params)`` with numpy leaves."""
    path = Path(path)
    cfg_file, par_file = path / CONFIG_FILE, path / PARAMS_FILE
    for f in (cfg_file, par_file):
        if not f.is_file():
            what = "is not a file" if f.exists() else "is missing"
            raise BundleError(f"{path} is not a jaxmat model bundle: {f.name} {what}")
    try:
        config = json.loads(cfg_file.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{cfg_file} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise BundleError(f"{cfg_file} must hold a JSON object, not {type(config).__name__}")
    if config.get("format") != FORMAT:
        raise BundleError(f"{cfg_file}: format is {config.get('format')!r}, expected {FORMAT!r}")
    version = config.get("format_version")
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        raise BundleError(
            f"{cfg_file}: bundle format version {version!r} is not supported "
            f"by this jaxmat (supports {', '.join(map(str, SUPPORTED_VERSIONS))})"
        )
    for key, kind in (("model", str), ("hyperparameters", dict), ("metadata", dict), ("params_sha256", str)):
        if key in config and not isinstance(config[key], kind) or (key != "metadata" and key not in config):
            raise BundleError(f"{cfg_file}: '{key}' must be a {'JSON object' if kind is dict else 'string'}, "
                              f"got {config.get(key)!r:.60}")
    if version >= 2 and config.get("config_sha256") != config_digest(config):
        raise BundleError(
            f"{cfg_file} was edited after it was saved: its model or hyperparameters no longer match config_sha256 "
            "(a changed cutoff or element order changes every energy). Restore the file, or re-save the model "
            "(jaxmat.load_model(...).save(...)) from a trusted copy")
    if version < 2:
        warnings.warn(f"{cfg_file}: bundle format 1 certifies the weights but not the hyperparameters; re-save it "
                      "with jaxmat.load_model(path).save(path) to add config_sha256", UserWarning, stacklevel=3)
    blob = par_file.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != config.get("params_sha256"):
        raise BundleError(f"{par_file} is corrupt: sha256 {digest} does not match config.json")
    try:
        params = flax.serialization.msgpack_restore(blob)
    except Exception as err:  # msgpack raises several types on bad data
        raise BundleError(f"{par_file} cannot be decoded: {err}") from None
    if not isinstance(params, dict):
        raise BundleError(f"{par_file} does not hold a tree of named weights")
    check_weights(params, str(par_file))
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
