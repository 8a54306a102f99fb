"""Neural-network building blocks shared by the models."""

from jaxmat.nn._basis import (
    polynomial_cutoff,
    real_spherical_harmonics_m0,
    smooth_spherical_bessel,
    spherical_bessel,
    spherical_bessel_roots,
    spherical_jn,
)
from jaxmat.nn._gated_mlp import GatedMLP

__all__ = [
    "GatedMLP",
    "polynomial_cutoff",
    "real_spherical_harmonics_m0",
    "smooth_spherical_bessel",
    "spherical_bessel",
    "spherical_bessel_roots",
    "spherical_jn",
]
