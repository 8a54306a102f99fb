"""Radial and angular bases and cutoff functions (pure jnp functions, no parameters).

Shapes: radial functions map r (E,) [Angstrom] to (E, K); angular ones map cos(theta) (T,)
to (T, L).
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np


def _spherical_jn_np(lmax: int, x: np.ndarray) -> list[np.ndarray]:
    """j_0..j_lmax by upward recurrence (float64 numpy; x well away from 0)."""
    j = [np.sin(x) / x, np.sin(x) / x**2 - np.cos(x) / x]
    for l in range(1, lmax):
        j.append((2 * l + 1) / x * j[l] - j[l - 1])
    return j[: lmax + 1]


@functools.lru_cache(maxsize=None)
def spherical_bessel_roots(max_l: int, max_n: int) -> np.ndarray:
    """First ``max_n`` positive roots of j_l for l < max_l, shape (max_l, max_n), float64.

    Roots of j_l interlace those of j_{l-1}, so each is bracketed and found by bisection.
    They are rounded to float32 precision, as matgl stores them (its pretrained weights
    were fitted with those values).
    """
    roots = [np.pi * np.arange(1, max_n + max_l)]  # j_0: n*pi
    for l in range(1, max_l):
        lo, hi = roots[-1][:-1].copy(), roots[-1][1:].copy()
        sign_lo = np.sign(_spherical_jn_np(l, lo)[l])
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            same = np.sign(_spherical_jn_np(l, mid)[l]) == sign_lo
            lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
        roots.append(0.5 * (lo + hi))
    out = np.stack([r[:max_n] for r in roots])
    return out.astype(np.float32).astype(np.float64)


def spherical_jn(lmax: int, x):
    """Spherical Bessel functions j_0..j_lmax of x (x > 0), list of arrays like x."""
    s, c = jnp.sin(x), jnp.cos(x)
    j = [s / x, s / x**2 - c / x]
    for l in range(1, lmax):
        j.append((2 * l + 1) / x * j[l] - j[l - 1])
    return j[: lmax + 1]


def spherical_bessel(r, cutoff: float, max_l: int, max_n: int):
    """Non-smooth spherical Bessel basis of M3GNet, (E,) -> (E, max_l * max_n), l-major columns.

    rbf_{l,n}(r) = sqrt(2/c^3) j_l(z_{l,n} r/c) / |j_{l+1}(z_{l,n})| with r clipped at c, so every
    function vanishes for r >= c (its derivative does not).
    """
    z = spherical_bessel_roots(max_l, max_n)  # (L, N)
    norm = np.stack([np.abs(_spherical_jn_np(l + 1, z[l])[l + 1]) for l in range(max_l)])
    norm = math.sqrt(2.0 / cutoff**3) / norm
    x = jnp.minimum(r, cutoff)[:, None] / cutoff
    cols = []
    for l in range(max_l):
        arg = x * jnp.asarray(z[l], dtype=x.dtype)  # (E, N)
        cols.append(spherical_jn(l, arg)[l] * jnp.asarray(norm[l], dtype=x.dtype))
    return jnp.concatenate(cols, axis=1)


def smooth_spherical_bessel(r, cutoff: float, n_max: int):
    """Smooth (orthogonalised) spherical Bessel basis of Kocer et al., (E,) -> (E, n_max).

    Every function and its first two derivatives vanish at r = cutoff.
    """
    n = np.arange(n_max, dtype=np.float64)
    pref = (-1.0) ** n * math.sqrt(2.0) * math.pi / cutoff**1.5
    pref = pref * (n + 1) * (n + 2) / np.sqrt((n + 1) ** 2 + (n + 2) ** 2)
    e = n**2 * (n + 2) ** 2 / (4 * (n + 1) ** 4 + 1)
    d = [1.0]
    for k in range(1, n_max):
        d.append(1.0 - e[k] / d[k - 1])
    x = jnp.minimum(r, cutoff)[:, None] * (math.pi / cutoff)

    def sinc(t):
        return jnp.sin(t) / t

    f = jnp.asarray(pref, x.dtype) * (sinc(x * jnp.asarray(n + 1, x.dtype)) + sinc(x * jnp.asarray(n + 2, x.dtype)))
    g = [f[:, 0]]
    for k in range(1, n_max):
        g.append((f[:, k] + math.sqrt(e[k] / d[k - 1]) * g[k - 1]) / math.sqrt(d[k]))
    return jnp.stack(g, axis=1)


def real_spherical_harmonics_m0(cos_theta, max_l: int):
    """Y_l^0(theta) for l < max_l, (T,) -> (T, max_l); Y_l^0 = sqrt((2l+1)/4pi) P_l(cos)."""
    p = [jnp.ones_like(cos_theta), cos_theta]
    for l in range(1, max_l - 1):
        p.append(((2 * l + 1) * cos_theta * p[l] - l * p[l - 1]) / (l + 1))
    y = [p[l] * math.sqrt((2 * l + 1) / (4 * math.pi)) for l in range(max_l)]
    return jnp.stack(y, axis=1)


def polynomial_cutoff(r, cutoff: float):
    """1 - 10u^3 + 15u^4 - 6u^5 for u = r/cutoff < 1, else 0, written as (1-u)^3 (1+3u+6u^2)
    so that it stays accurate in float32 near the cutoff. Value and two derivatives are 0 at
    the cutoff."""
    u = jnp.minimum(r / cutoff, 1.0)
    return (1.0 - u) ** 3 * (1.0 + 3.0 * u + 6.0 * u * u)
