"""Function-preserving growth of a trained M3GNet: a larger angular basis (``max_l``) or more
interaction blocks (``nblocks``). The grown model computes the same energies, forces and stresses
as the trained one until it is trained further (fine-tune with ``model.init_from`` +
``model.hyperparameters``).

``max_l``: M3GNet's bond basis (non-smooth spherical Bessel) and its three-body basis both have
l-major columns, column ``l * max_n + n`` for ``l < max_l``, and the functions of a given (l, n) do
not depend on ``max_l``. A model with a larger ``max_l`` therefore contains the smaller one: put
every trained array in the leading block of the larger array and set the new rows and columns to
zero. Training then uses the new angular channels (l >= old max_l).

``nblocks``: the blocks are residual (``e += ...``, ``v += ...``) and the bond features reach the
energy only through the node updates, so appended blocks whose node-update weights
(``conv_{b}_node_weight``) are zero leave the atom features, hence the energy, unchanged. The rest
of a new block starts from a seeded random initialisation, so the node-update weights receive a
gradient at once and the other weights from the first step on (a zero-initialised residual branch,
as in ReZero / Fixup).
"""

from __future__ import annotations

import re

import jax
import numpy as np

from jaxmat.models._model import Model, expected_param_shapes, fresh_params
from jaxmat.models._registry import FAMILIES

#: hyperparameters that ``grow_model`` may raise, per model family
GROWABLE: dict[str, tuple[str, ...]] = {"M3GNet": ("max_l", "nblocks")}
_BLOCK = re.compile(r"^(three_body|conv)_(\d+)_")


def grow_model(model, *, seed: int = 0, **changes):
    """A copy of ``model`` (a ``Model`` with parameters) with larger ``changes`` (e.g. ``max_l=7``,
    ``nblocks=4``) that gives the same outputs until trained. ``seed`` initialises new blocks.

    Raises ValueError for a hyperparameter that cannot grow this way, a smaller value, or a model
    whose architecture does not contain its smaller self (max_l: the l-major spherical-Bessel bond
    basis and the three_body interaction; nblocks: an invariant interaction).
    """
    if model.params is None:
        raise ValueError("grow_model needs a model with parameters (a pretrained or trained bundle)")
    allowed = GROWABLE.get(model.family, ())
    bad = sorted(set(changes) - set(allowed))
    if bad:
        raise ValueError(f"cannot change {bad} of a trained {model.family} model; "
                         f"hyperparameters that can grow when fine-tuning: {list(allowed)}")
    hyper = dict(model.hyperparameters)
    interaction = hyper.get("interaction", "three_body")
    if "max_l" in changes and (hyper.get("rbf_type", "spherical_bessel") != "spherical_bessel"
                               or interaction != "three_body"):
        raise ValueError("max_l can grow only with rbf_type 'spherical_bessel' and the three_body interaction")
    if "nblocks" in changes and interaction not in ("three_body", "two_body"):
        raise ValueError(f"nblocks can grow only with an invariant interaction, not {interaction!r}")
    defaults = FAMILIES[model.family]
    grown_from = {}
    for key, value in changes.items():
        old = int(hyper.get(key, getattr(defaults, key)))
        if int(value) < old:
            raise ValueError(f"{key} can only grow when fine-tuning: the model has {old}, asked for {value}")
        grown_from[key] = old
        hyper[key] = int(value)
    shapes = expected_param_shapes(model.family, hyper)
    old_blocks = int(model.hyperparameters.get("nblocks", getattr(defaults, "nblocks")))
    new = set(shapes) - set(model.params)
    if new:  # parameters of appended blocks only: seeded random, node-update weights zero
        for name in new:
            m = _BLOCK.match(name)
            if not (m and int(m.group(2)) >= old_blocks):
                raise ValueError(f"growing {changes} adds parameter group {name!r}, which is not a new block's")
        fresh = fresh_params(model.family, hyper, seed)
    missing = set(model.params) - set(shapes)
    if missing:
        raise ValueError(f"the grown model has no place for trained parameters {sorted(missing)}")

    def embed(shape, old):
        old = np.asarray(old)
        if old.ndim != len(shape.shape) or any(o > n for o, n in zip(old.shape, shape.shape)):
            raise ValueError(f"parameter of shape {old.shape} does not fit in {shape.shape}")
        out = np.zeros(shape.shape, old.dtype)
        out[tuple(slice(0, o) for o in old.shape)] = old
        return out

    params = {}
    for name, group in shapes.items():
        if name in model.params:
            params[name] = jax.tree_util.tree_map(embed, group, model.params[name])
        elif name.startswith("conv_") and name.endswith("_node_weight"):
            params[name] = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, np.float32), group)
        else:
            params[name] = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), fresh[name])
    metadata = {**model.metadata, "grown_from": {**model.metadata.get("grown_from", {}), **grown_from}}
    return Model(model.family, hyper, params, metadata)
