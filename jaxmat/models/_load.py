"""``load_model``: a verified bundle (by pretrained name or folder) as a ``Model``, an ``Ensemble``
(format 3) or an ``LLPRModel`` (format 4).

Lives apart from the classes it builds so that ``Model`` knows nothing of its subclasses: the
loader imports every kind, no kind imports the loader.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from jaxmat._pretrained import DEFAULT_MODEL, PRETRAINED_DIR, list_pretrained
from jaxmat.errors import BundleError, ConfigError
from jaxmat.models._bundle import check_params, read_bundle
from jaxmat.models._ensemble import Ensemble, check_ensemble_config
from jaxmat.models._llpr import load_llpr
from jaxmat.models._model import Model, expected_param_shapes
from jaxmat.models._registry import FAMILIES, check_hyperparameters


def load_model(name_or_path=DEFAULT_MODEL) -> Model:
    """Load a model bundle by pretrained name (see ``list_pretrained()``) or folder path.

    Works offline and without torch. Raises BundleError for a missing, corrupt or incompatible
    bundle.
    """
    if isinstance(name_or_path, Model):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"load_model expects a pretrained model name, a bundle folder path or a jaxmat.Model, "
                        f"got {type(name_or_path).__name__} {name_or_path!r:.60}")
    if not str(name_or_path).strip():
        raise BundleError(f"load_model got an empty name; pretrained models: {', '.join(list_pretrained())}")
    path = Path(name_or_path)
    if not path.is_dir():
        candidate = PRETRAINED_DIR / str(name_or_path)
        if not candidate.is_dir():
            raise BundleError(
                f"no model bundle at {str(name_or_path)!r}; pretrained models: {', '.join(list_pretrained())}"
            )
        path = candidate
    config, params = read_bundle(path)
    family = config.get("model")
    if family not in FAMILIES:
        raise BundleError(f"{path}: unknown model family {family!r}; known: {sorted(FAMILIES)}")
    hyper = config["hyperparameters"]
    try:
        check_hyperparameters(family, hyper, f"{path / 'config.json'}: hyperparameters", required=("element_types",))
    except ConfigError as err:
        raise BundleError(str(err)) from None
    try:
        expected = expected_param_shapes(family, hyper)
    except (TypeError, ValueError, KeyError, IndexError) as err:  # the module cannot be built from them
        raise BundleError(f"{path}: hyperparameters do not fit {family}: {type(err).__name__}: {err}") from None
    metadata = dict(config.get("metadata", {}))
    metadata.setdefault("name", path.name)
    if "ensemble" in config or config.get("format_version") == 3:
        return _load_ensemble(path, config, family, hyper, params, expected, metadata)
    if "llpr" in config or config.get("format_version") == 4:
        return load_llpr(path, config, family, hyper, params, expected, metadata)
    check_params(params, expected, str(path))
    return Model(family, hyper, params, metadata)


def _load_ensemble(path, config, family, hyper, params, expected, metadata) -> Ensemble:
    """An ``Ensemble`` from a verified format-3 bundle: the stacked groups carry (K, ...) shapes."""
    try:
        ens = check_ensemble_config(config.get("ensemble"), f"{path / 'config.json'}")
    except ConfigError as err:
        raise BundleError(str(err)) from None
    unknown = sorted(set(ens["stacked"]) - set(expected))
    if unknown:
        raise BundleError(f"{path}: ensemble stacks parameter group(s) {unknown} the model does not have")
    K = ens["size"]
    stacked_shapes = {g: (jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct((K, *s.shape), s.dtype), v)
                          if g in ens["stacked"] else v) for g, v in expected.items()}
    check_params(params, stacked_shapes, str(path))
    return Ensemble(family, hyper, params, metadata, kind=ens["kind"], stacked=tuple(ens["stacked"]),
                    calibration=ens["calibration"])
