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
from jaxmat.nn._irreps import (
    IrrepsLinear,
    PathLinear,
    RadialMLP,
    bessel_basis,
    gate,
    parse_irreps,
    path_groups,
    poly_cutoff,
    spherical_harmonics,
    uvu_aggregate,
    uvu_paths,
    xplor_cutoff,
)
from jaxmat.nn._mlp import ACTIVATIONS, MLP, activation, softplus2
from jaxmat.nn._set2set import LSTMCell, Set2Set, segment_softmax

__all__ = [
    "activation",
    "ACTIVATIONS",
    "bessel_basis",
    "EquivariantInteraction",
    "gate",
    "GatedMLP",
    "IrrepsLinear",
    "LSTMCell",
    "MLP",
    "parse_irreps",
    "path_groups",
    "PathLinear",
    "poly_cutoff",
    "polynomial_cutoff",
    "RadialMLP",
    "real_spherical_harmonics_m0",
    "segment_softmax",
    "Set2Set",
    "smooth_spherical_bessel",
    "softplus2",
    "spherical_bessel",
    "spherical_bessel_roots",
    "spherical_harmonics",
    "spherical_jn",
    "uvu_aggregate",
    "uvu_paths",
    "xplor_cutoff",
]
