"""Neural-network building blocks shared by the models."""

from jaxmat.nn._basis import (
    polynomial_cutoff,
    real_spherical_harmonics_m0,
    smooth_spherical_bessel,
    spherical_bessel,
    spherical_bessel_roots,
    spherical_jn,
)
from jaxmat.nn._equivariant import EquivariantInteraction
from jaxmat.nn._gated_mlp import GatedMLP
from jaxmat.nn._mlp import ACTIVATIONS, MLP, activation, softplus2
from jaxmat.nn._set2set import LSTMCell, Set2Set, segment_softmax

__all__ = [
    "EquivariantInteraction",
    "ACTIVATIONS",
    "LSTMCell",
    "MLP",
    "Set2Set",
    "activation",
    "segment_softmax",
    "softplus2",
    "GatedMLP",
    "polynomial_cutoff",
    "real_spherical_harmonics_m0",
    "smooth_spherical_bessel",
    "spherical_bessel",
    "spherical_bessel_roots",
    "spherical_jn",
]
