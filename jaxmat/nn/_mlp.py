"""Plain MLPs and the activations model configs may name."""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def softplus2(x):
    """softplus(x) - ln 2: zero at x = 0 (MEGNet's activation)."""
    return jax.nn.softplus(x) - math.log(2.0)


#: activation name (as written in configs) -> function
ACTIVATIONS = {
    "softplus2": softplus2,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


class MLP(nn.Module):
    """Dense layers of widths ``features`` with ``act`` between them (and after the last one if
    ``activate_last``). Params: ``layers_k`` (Dense). (M, F_in) -> (M, features[-1])."""

    features: Sequence[int]
    act: str = "silu"
    activate_last: bool = True

    @nn.compact
    def __call__(self, x):
        f = activation(self.act)
        for k, width in enumerate(self.features):
            x = nn.Dense(width, name=f"layers_{k}")(x)
            if k < len(self.features) - 1 or self.activate_last:
                x = f(x)
        return x
