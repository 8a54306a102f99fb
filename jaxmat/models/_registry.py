"""The model families a bundle may name, and their hyperparameters (defaults, completion, checks).

The registry of family names only; the shipped pretrained bundles are listed in
``jaxmat._pretrained`` and loaded by ``jaxmat.models.load_model`` (``_load.py``).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from jaxmat._checks import check_fields
from jaxmat.errors import ConfigError
from jaxmat.models._m3gnet import M3GNet
from jaxmat.models._megnet import MEGNet
from jaxmat.models._sevennet import SevenNet

#: Model families a bundle may name in its ``"model"`` field.
FAMILIES: dict[str, type[nn.Module]] = {"M3GNet": M3GNet, "MEGNet": MEGNet, "SevenNet": SevenNet}


def default_hyperparameters(family: str) -> dict:
    """The family's constructor defaults as a JSON-able dict (explicit in every bundle)."""
    out = {}
    for f in dataclasses.fields(FAMILIES[family]):
        if f.name in ("parent", "name") or f.default is dataclasses.MISSING:
            continue
        out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
    return out


def resolved_hyperparameters(family: str, hyperparameters: dict) -> dict:
    """``hyperparameters`` completed with the family's defaults: what the module computes with."""
    return {**default_hyperparameters(family), **hyperparameters}


def check_hyperparameters(family: str, hyper: dict, where: str, required: tuple = ()) -> None:
    """ConfigError unless ``hyper`` fits ``family``: each value against the family's annotations and
    ``RULES`` (``jaxmat._checks``), then the rules across values. Used by ``load_model`` (bundles)
    and by training configs (from-scratch hyperparameters)."""
    cls = FAMILIES[family]
    check_fields(cls, hyper, where, required)
    full = resolved_hyperparameters(family, hyper)
    tb, rc = full.get("threebody_cutoff"), full.get("cutoff")
    if tb is not None and rc is not None and tb > rc:
        raise ConfigError(f"{where}: threebody_cutoff {tb} A exceeds cutoff {rc} A (triplets are pairs of bonds of "
                          "the graph, so their cutoff function would be cut off abruptly)")
