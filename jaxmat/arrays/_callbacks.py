"""Epoch callbacks on the validation loss, optax-style: a ``Callback`` is a NamedTuple of pure
functions ``init() -> state`` and ``update(state, logs) -> (state, actions)`` with
``logs = {"epoch", "val_loss"}``; ``actions`` may hold ``lr_scale`` (multiplies the learning rate
from now on) and ``stop`` (end training).

The one implementation of reduce-on-plateau and early stopping: ``jaxmat.arrays.fit`` composes
them, and the potential trainer (``jaxmat.train``) applies them to the counters of its checkpointed
state. Why not ``optax.contrib.reduce_on_plateau``: it needs a positive tolerance (rtol or atol), so
"improved" is not the strict ``val_loss < best`` used here; it keeps the best loss and the scale in
the parameters' dtype (float32) rather than Python floats; and it refuses a factor of 1.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np


class Callback(NamedTuple):
    init: Callable[[], dict]
    update: Callable[[dict, dict], tuple[dict, dict]]


def patience_spent(bad: int, patience: int | None) -> bool:
    """Early stopping's test: ``bad`` epochs without improvement reach ``patience`` (None: never)."""
    return patience is not None and bad >= patience


def reduce_on_plateau(patience: int = 10, factor: float = 0.5, min_scale: float = 1e-3) -> Callback:
    """After ``patience`` epochs without a validation loss below the best so far, multiply the
    learning rate by ``factor`` (and count again), unless the scale would fall below ``min_scale``.
    State: {"best", "bad" (epochs since the best or the last reduction), "scale"}."""
    def update(s, logs):
        if logs["val_loss"] < s["best"]:
            return {**s, "best": logs["val_loss"], "bad": 0}, {}
        bad = s["bad"] + 1
        if bad >= patience and s["scale"] * factor >= min_scale:
            return {**s, "bad": 0, "scale": s["scale"] * factor}, {"lr_scale": factor}
        return {**s, "bad": bad}, {}

    return Callback(lambda: {"best": np.inf, "bad": 0, "scale": 1.0}, update)


def early_stopping(patience: int | None = 30) -> Callback:
    """Stop after ``patience`` epochs without a validation loss below the best so far (None: never).
    State: {"best", "bad" (epochs since the best)}."""
    def update(s, logs):
        if logs["val_loss"] < s["best"]:
            return {"best": logs["val_loss"], "bad": 0}, {}
        return {"best": s["best"], "bad": s["bad"] + 1}, {"stop": patience_spent(s["bad"] + 1, patience)}

    return Callback(lambda: {"best": np.inf, "bad": 0}, update)


def warmup(epochs: int = 5) -> Callback:
    """Linear warm-up of the learning rate over the first ``epochs`` epochs (starts at 1/epochs)."""
    def update(s, logs):
        e = logs["epoch"]
        return s, ({"lr_scale": (e + 1) / e} if e < epochs else {})

    return Callback(lambda: {}, update)
