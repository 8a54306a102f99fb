"""Effective conductivity of a periodic two-phase image: finite volumes + conjugate gradients,
and the Hashin-Shtrikman bounds it must respect.

For a unit macroscopic gradient E along axis a, the temperature is T = x_a + phi with phi
periodic; flux continuity div(sigma grad T) = 0 is discretised on the pixel grid with harmonic-mean
face conductivities and solved for phi by (Jacobi-preconditioned) CG. The effective conductivity
along a is the mean face flux; ``effective_conductivity`` returns the mean of the xx and yy values.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _faces(sigma, axis):
    nxt = jnp.roll(sigma, -1, axis)
    return 2.0 * sigma * nxt / (sigma + nxt)  # harmonic mean on the face between i and i+1


def _flux_divergence(phi, gx, gy, ex, ey):
    """-div(sigma grad(phi + E.x)) with face conductivities gx (faces i+1/2 along 0), gy."""
    jx = gx * (jnp.roll(phi, -1, 0) - phi + ex)
    jy = gy * (jnp.roll(phi, -1, 1) - phi + ey)
    return -((jx - jnp.roll(jx, 1, 0)) + (jy - jnp.roll(jy, 1, 1)))


def conductivity_along(sigma, axis: int, tol: float = 1e-10, maxiter: int = 5000):
    """Effective conductivity for a unit gradient along ``axis`` (0 or 1) of sigma (n, n)."""
    gx, gy = _faces(sigma, 0), _faces(sigma, 1)
    ex, ey = (1.0, 0.0) if axis == 0 else (0.0, 1.0)
    A = lambda p: _flux_divergence(p, gx, gy, 0.0, 0.0)  # noqa: E731  linear part (SPD on mean-zero fields)
    b = -_flux_divergence(jnp.zeros_like(sigma), gx, gy, ex, ey)
    diag = gx + jnp.roll(gx, 1, 0) + gy + jnp.roll(gy, 1, 1)
    phi, _ = jax.scipy.sparse.linalg.cg(A, b, tol=tol, maxiter=maxiter, M=lambda r: r / diag)
    g = gx if axis == 0 else gy
    grad = (jnp.roll(phi, -1, axis) - phi) + 1.0
    return jnp.mean(g * grad)


def effective_conductivity(phase, sigma_low: float = 1.0, sigma_high: float = 10.0):
    """Mean of the xx and yy effective conductivities of a binary image ``phase`` (n, n) in {0, 1}
    (1 -> ``sigma_high``)."""
    sigma = jnp.where(phase > 0.5, sigma_high, sigma_low)
    return 0.5 * (conductivity_along(sigma, 0) + conductivity_along(sigma, 1))


def hashin_shtrikman_2d(fraction_high, sigma_low: float = 1.0, sigma_high: float = 10.0):
    """(lower, upper) HS bounds in 2D for a volume fraction ``fraction_high`` of the better conductor."""
    f2 = fraction_high
    f1 = 1.0 - f2
    s1, s2 = sigma_low, sigma_high
    lower = s1 + f2 / (1.0 / (s2 - s1) + f1 / (2.0 * s1))
    upper = s2 + f1 / (1.0 / (s1 - s2) + f2 / (2.0 * s2))
    return lower, upper
