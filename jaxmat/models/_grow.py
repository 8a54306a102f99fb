"""Function-preserving growth of a trained model's angular basis (fine-tune with a larger ``max_l``).

M3GNet's bond basis (non-smooth spherical Bessel) and its three-body basis both have l-major
columns, column ``l * max_n + n`` for ``l < max_l``, and the functions of a given (l, n) do not
depend on ``max_l``. A model with a larger ``max_l`` therefore contains the smaller one: put every
trained array in the leading block of the larger array and set the new rows and columns to zero,
and it computes the same energies, forces and stresses. Training then uses the new angular
channels (l >= old max_l) from the pretrained starting point.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxmat.models._model import FAMILIES, Model, expected_param_shapes

#: hyperparameters that ``grow_model`` may raise, per model family
GROWABLE: dict[str, tuple[str, ...]] = {"M3GNet": ("max_l",)}


def grow_model(model, **changes):
    """A copy of ``model`` (a ``Model`` with parameters) with larger ``changes`` (e.g. ``max_l=7``)
    that gives the same outputs until trained: old weights in the leading block, new ones zero.

    Raises ValueError for a hyperparameter that cannot grow this way, a smaller value, or a model
    whose bond basis is not the l-major spherical-Bessel one.
    """
    if model.params is None:
        raise ValueError("grow_model needs a model with parameters (a pretrained or trained bundle)")
    allowed = GROWABLE.get(model.family, ())
    bad = sorted(set(changes) - set(allowed))
    if bad:
        raise ValueError(f"cannot change {bad} of a trained {model.family} model; "
                         f"hyperparameters that can grow when fine-tuning: {list(allowed)}")
    hyper = dict(model.hyperparameters)
    if hyper.get("rbf_type", "spherical_bessel") != "spherical_bessel" or \
            hyper.get("interaction", "three_body") != "three_body":
        raise ValueError("max_l can grow only with rbf_type 'spherical_bessel' and the three_body interaction")
    defaults = FAMILIES[model.family]
    grown_from = {}
    for key, value in changes.items():
        old = int(hyper.get(key, getattr(defaults, key)))
        if int(value) < old:
            raise ValueError(f"{key} can only grow when fine-tuning: the model has {old}, asked for {value}")
        grown_from[key] = old
        hyper[key] = int(value)
    shapes = expected_param_shapes(model.family, hyper)

    def embed(shape, old):
        old = np.asarray(old)
        if old.ndim != len(shape.shape) or any(o > n for o, n in zip(old.shape, shape.shape)):
            raise ValueError(f"parameter of shape {old.shape} does not fit in {shape.shape}")
        out = np.zeros(shape.shape, old.dtype)
        out[tuple(slice(0, o) for o in old.shape)] = old
        return out

    params = jax.tree_util.tree_map(embed, shapes, model.params)
    metadata = {**model.metadata, "grown_from": {**model.metadata.get("grown_from", {}), **grown_from}}
    return Model(model.family, hyper, params, metadata)
