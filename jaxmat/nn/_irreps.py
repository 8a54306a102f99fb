"""e3nn (torch) conventions in plain JAX, for ports of e3nn-built models (SevenNet, NequIP).

Node features are held per angular momentum ``l`` as arrays of shape (N, 2l+1, mul) ("ir_mul"
layout: the channels are the contiguous last axis, so a linear layer is one matmul per ``l``).
A feature set is a dict ``{l: array}``; an ``l`` that is absent is zero.

Conventions reproduced exactly (checked against e3nn 0.6 in tests/test_sevennet_parts.py):

* spherical harmonics: e3nn's real basis, components (x, y, z) for l = 1, "component"
  normalisation (|Y_l|^2 = 2l+1 on the unit sphere), from ``e3nn_jax.spherical_harmonics``;
* Clebsch-Gordan coefficients: ``e3nn_jax.clebsch_gordan`` = e3nn's ``wigner_3j`` (unit norm);
* ``o3.Linear``: weights N(0, 1) divided by sqrt(fan-in) in the forward pass (path
  normalisation "element");
* ``o3.TensorProduct`` 'uvu' paths with a one-channel second input (the spherical harmonics),
  "component" irrep normalisation and "element" path normalisation: each path is scaled by
  sqrt(2 l_out + 1);
* ``nn.FullyConnectedNet`` and ``nn.Gate``: activations scaled by e3nn's ``normalize2mom``
  constant (``E3NN_SILU_NORM`` for SiLU).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

#: e3nn's ``normalize2mom(silu).cst``: 1 / sqrt(<silu(z)^2>) estimated by e3nn 0.6 (torch) from
#: 10^6 normal samples drawn with seed 0. The sampled value, not the exact integral (1.67912...),
#: is what trained e3nn models hold in every activation; the converter checks it against torch.
E3NN_SILU_NORM = 1.6791767923989418


def normalized_silu(x):
    """SiLU times ``E3NN_SILU_NORM`` (e3nn's second-moment-normalised SiLU)."""
    return jax.nn.silu(x) * jnp.asarray(E3NN_SILU_NORM, x.dtype)


def parse_irreps(irreps: str) -> dict[int, int]:
    """'128x0e+64x1e+32x2e' -> {0: 128, 1: 64, 2: 32}. Only even-parity irreps of distinct,
    increasing l (the node irreps of models without parity, such as SevenNet-0)."""
    out: dict[int, int] = {}
    for mul, ir in e3nn.Irreps(irreps):
        if ir.p != 1:
            raise ValueError(f"irreps {irreps!r}: only even parity (e) is supported, got {mul}x{ir}")
        if out and ir.l <= max(out):
            raise ValueError(f"irreps {irreps!r}: each l must appear once, in increasing order")
        if mul > 0:
            out[ir.l] = mul
    return out


class Path(NamedTuple):
    """One 'uvu' tensor-product path: input ``l_in`` (x) harmonic ``l_sh`` -> ``l_out``."""

    l_in: int
    l_sh: int
    l_out: int


@functools.lru_cache(maxsize=None)
def uvu_paths(ls_in: tuple, lmax_sh: int, ls_out: tuple) -> tuple[Path, ...]:
    """The convolution paths of SevenNet/NequIP in weight order: grouped by ``l_out`` (ascending),
    within a group in e3nn's instruction order (input irrep, then harmonic, then l_out)."""
    natural = [Path(l1, l2, l3) for l1 in ls_in for l2 in range(lmax_sh + 1)
               for l3 in range(abs(l1 - l2), l1 + l2 + 1) if l3 in ls_out]
    return tuple(sorted(natural, key=lambda p: p.l_out))  # stable: natural order within an l_out


def spherical_harmonics(vectors, lmax: int, normalize: bool = True):
    """(E, (lmax+1)^2) e3nn spherical harmonics ("component" normalisation) of ``vectors`` (E, 3),
    l = 0 .. lmax concatenated (l occupies columns l^2 .. (l+1)^2 - 1). With ``normalize`` the
    vectors are made unit first (callers keep zero vectors out)."""
    irreps = "+".join(f"{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))
    return e3nn.spherical_harmonics(irreps, vectors, normalize=normalize, normalization="component").array


def path_groups(paths: Sequence[Path]) -> list[tuple[Path, ...]]:
    """Consecutive paths of the same (l_in, l_out) (they differ in l_sh only): the unit of
    computation of ``uvu_aggregate``; their weights are contiguous in ``uvu_paths`` order."""
    groups: list[list[Path]] = []
    for p in paths:
        if groups and (groups[-1][0].l_in, groups[-1][0].l_out) == (p.l_in, p.l_out):
            groups[-1].append(p)
        else:
            groups.append([p])
    return [tuple(g) for g in groups]


@functools.lru_cache(maxsize=None)
def _group_matrix(group: tuple) -> np.ndarray:
    """(Y @ M)[e] reshaped (P, 2l_in+1, 2l_out+1) = sqrt(2l_out+1) sum_j C_p[i, j, k] Y_{l_sh(p)}[e, j]
    for the P paths of ``group``; M is ((lmax_sh+1)^2, P (2l_in+1)(2l_out+1)), float64."""
    n_sh = (max(p.l_sh for p in group) + 1) ** 2
    d_in, d_out = 2 * group[0].l_in + 1, 2 * group[0].l_out + 1
    m = np.zeros((n_sh, len(group), d_in, d_out))
    for k, p in enumerate(group):
        c = np.asarray(e3nn.clebsch_gordan(*p), np.float64) * np.sqrt(2 * p.l_out + 1)  # (i, j, k)
        m[p.l_sh ** 2:(p.l_sh + 1) ** 2, k] = np.transpose(c, (1, 0, 2))
    return m.reshape(n_sh, -1)


@jax.custom_vjp
def weighted_tp(a, xe, w):
    """msg[e, p, k, u] = sum_i a[e, p, i, k] x[e, i, u] w[e, p, u]: (E, P, i, k), (E, i, u), (E, P, u)
    -> (E, P, k, u). Sums over the few components are unrolled into elementwise products, in the
    backward pass too (written out here): JAX's own transposes of the broadcasts are reductions over
    small middle axes, which XLA's CPU backend runs several times slower (measured 2x on the
    whole energy + forces + stress of SevenNet-0)."""
    return _weighted_tp_fwd(a, xe, w)[0]


def _weighted_tp_fwd(a, xe, w):
    xw = xe[:, None] * w[:, :, None]  # (E, P, i, u)
    msg = sum(a[:, :, i, :, None] * xw[:, :, i, None, :] for i in range(a.shape[2]))
    return msg, (a, xe, w, xw)


def _weighted_tp_bwd(res, g):
    a, xe, w, xw = res
    d_in, d_out = a.shape[2], a.shape[3]
    g_xw = jnp.stack([sum(a[:, :, i, k, None] * g[:, :, k] for k in range(d_out)) for i in range(d_in)], axis=2)
    g_a = jnp.einsum("epku,epiu->epik", g, xw)
    g_xe = sum(g_xw[:, p] * w[:, p, None, :] for p in range(w.shape[1]))
    g_w = sum(g_xw[:, :, i] * xe[:, None, i] for i in range(d_in))
    return g_a, g_xe, g_w


weighted_tp.defvjp(_weighted_tp_fwd, _weighted_tp_bwd)


def uvu_aggregate(x: dict, sh, weights: Sequence, paths: Sequence[Path], senders, receivers, n_node: int) -> dict:
    """'uvu' tensor-product messages of every edge, weighted per path and channel, summed per atom.

    Message of edge e for path (l_in, l_sh, l_out), channel u, component k:
    ``w_path[e, u] * sqrt(2l_out+1) * sum_ij C[i, j, k] x[senders[e], i, u] Y[e, j]``, summed onto
    ``receivers[e]``. Paths of the same (l_in, l_out) (``path_groups``) are one computation: a
    batched (2l_out+1, 2l_in+1) x (2l_in+1, mul) product per edge and path, then one sorted
    segment sum; no per-edge array is sliced or concatenated (their transposes, pads and sums of
    pads, dominated the backward pass).

    Args:
      x: {l_in: (N, 2l_in+1, mul)} node features.
      sh: (E, (lmax_sh+1)^2) spherical harmonics (all l concatenated).
      weights: per path group (E, P * mul_l_in), paths in ``paths`` order (``RadialMLP`` with ``split``).
      paths: from ``uvu_paths``.
    Returns {path: (N, 2l_out+1, mul_l_in)}.
    """
    gathered = {l: v[senders] for l, v in x.items() if any(p.l_in == l for p in paths)}
    out = {}
    for group, w in zip(path_groups(paths), weights):
        xe = gathered[group[0].l_in]  # (E, 2l_in+1, mul)
        n_edge, d_in, mul = xe.shape
        mat = _group_matrix(group)
        a = (sh[:, :mat.shape[0]] @ jnp.asarray(mat, xe.dtype)).reshape(n_edge, len(group), d_in, -1)
        msg = weighted_tp(a, xe, w.reshape(n_edge, len(group), mul))
        agg = jax.ops.segment_sum(msg, receivers, num_segments=n_node, indices_are_sorted=True)
        for k, p in enumerate(group):
            out[p] = agg[:, k]
    return out


class PathLinear(nn.Module):
    """``o3.Linear`` from the tensor-product output (per l_out, the paths' channels concatenated in
    ``paths`` order) to ``muls_out``, applied path by path: the same parameters ``w{l}``
    (sum of the paths' muls, mul_out) and result as ``IrrepsLinear`` on the concatenation."""

    muls_out: tuple

    @nn.compact
    def __call__(self, agg: dict, paths: Sequence[Path]) -> dict:
        out = {}
        for l, mul_out in self.muls_out:
            group = [p for p in paths if p.l_out == l]
            if not group:
                continue
            fan_in = sum(agg[p].shape[-1] for p in group)
            w = self.param(f"w{l}", nn.initializers.normal(1.0), (fan_in, mul_out))
            dt = agg[group[0]].dtype
            start, acc = 0, 0
            for p in group:
                h = agg[p]
                acc = acc + h @ w[start:start + h.shape[-1]].astype(dt)
                start += h.shape[-1]
            out[l] = acc * jnp.asarray(fan_in ** -0.5, dt)
        return out


class IrrepsLinear(nn.Module):
    """e3nn ``o3.Linear`` between even-parity feature sets: per l, (N, 2l+1, mul_in) @
    w_l (mul_in, mul_out) / sqrt(mul_in). ``muls_out``: ((l, mul_out), ...). Params ``w{l}``
    (N(0, 1) at initialisation, as e3nn). An output l without input is absent (zero)."""

    muls_out: tuple

    @nn.compact
    def __call__(self, x: dict) -> dict:
        out = {}
        for l, mul_out in self.muls_out:
            if l not in x:
                continue
            h = x[l]
            w = self.param(f"w{l}", nn.initializers.normal(1.0), (h.shape[-1], mul_out))
            out[l] = (h @ w.astype(h.dtype)) * jnp.asarray(h.shape[-1] ** -0.5, h.dtype)
        return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def split_columns(x, sizes: tuple) -> list:
    """``x`` (M, sum(sizes)) -> its column blocks. The backward pass concatenates the blocks'
    cotangents once; JAX's own transpose of the slices pads each to the full width and sums them."""
    bounds = np.cumsum((0,) + sizes)
    return [x[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _split_fwd(x, sizes):
    return split_columns(x, sizes), None


def _split_bwd(sizes, _, cotangents):
    return (jnp.concatenate(cotangents, axis=1),)


split_columns.defvjp(_split_fwd, _split_bwd)


class RadialMLP(nn.Module):
    """e3nn ``nn.FullyConnectedNet`` without biases: layers ``layer_k`` (fan_in, fan_out) divided
    by sqrt(fan_in), normalised SiLU between layers (not after the last). (E, K) -> (E, widths[-1]),
    or with ``split`` (widths summing to widths[-1]) the list of the output's column blocks
    (``split_columns``)."""

    widths: Sequence[int]
    split: tuple | None = None

    @nn.compact
    def __call__(self, x):
        n = len(self.widths)
        for k, width in enumerate(self.widths):
            w = self.param(f"layer_{k}", nn.initializers.normal(1.0), (x.shape[-1], width)).astype(x.dtype)
            scale = jnp.asarray(x.shape[-1] ** -0.5, x.dtype)
            if k == n - 1 and self.split is not None:
                return split_columns((x @ w) * scale, tuple(self.split))
            x = (x @ w) * scale
            if k < n - 1:
                x = normalized_silu(x)
        return x


def gate(h: dict, muls_out: dict) -> dict:
    """e3nn ``nn.Gate`` as SevenNet uses it: h[0] holds the scalars (muls_out[0]) then one gate
    per gated channel (l > 0, in increasing l); scalars -> silu, gated l -> h[l] * silu(gate)."""
    n0 = muls_out[0]
    out = {0: normalized_silu(h[0][:, :, :n0])}
    start = n0
    for l in sorted(k for k in muls_out if k > 0):
        g = normalized_silu(h[0][:, :, start:start + muls_out[l]])
        out[l] = h[l] * g if l in h else None
        start += muls_out[l]
    return {l: v for l, v in out.items() if v is not None}


def xplor_cutoff(r, r_on: float, r_cut: float):
    """XPLOR switching function: 1 below ``r_on``, smooth to 0 at ``r_cut`` (HOOMD-blue's)."""
    r2, on2, cut2 = r * r, r_on * r_on, r_cut * r_cut
    smooth = (cut2 - r2) ** 2 * (cut2 + 2 * r2 - 3 * on2) / (cut2 - on2) ** 3
    return jnp.where(r < r_on, jnp.ones_like(r), smooth)


def poly_cutoff(r, r_cut: float, p: int = 6):
    """Polynomial envelope of DimeNet (p = 6), as NequIP/SevenNet write it (no clamp beyond r_cut)."""
    x = r / r_cut
    return (1 - (p + 1.0) * (p + 2.0) / 2.0 * x**p + p * (p + 2.0) * x ** (p + 1)
            - p * (p + 1.0) / 2.0 * x ** (p + 2))


def bessel_basis(r, coeffs, r_cut: float):
    """(E,) -> (E, K): (2 / r_cut) sin(coeffs_k r) / r, coeffs trainable (initially k pi / r_cut)."""
    return (2.0 / r_cut) * jnp.sin(coeffs[None, :] * r[:, None]) / r[:, None]
