"""Attention over the elements of a formula (Roost / CrabNet-style): each present element is a
token (element embedding + an encoding of its fraction), transformer layers let the elements of
a composition see each other, and a fraction-aware attention pooling reads out one number.

Input: the (B, F) feature rows of the composition pipeline whose first ``n_elements`` columns are
the raw (unstandardised) ElemNet element fractions; train with ``FitConfig(raw_columns=86)``.
Any further columns (e.g. Magpie statistics, standardised by ``fit``) feed the readout head when
``use_descriptors`` is set.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def fraction_encoding(frac: jnp.ndarray, n_freq: int = 8) -> jnp.ndarray:
    """(..., ) fractions in (0, 1] -> (..., 4 n_freq + 2) features: sin/cos of 2^k pi x and of
    2^k pi (log x / log 1e-4), plus x and log x / log 1e-4 (CrabNet encodes fractions on a linear
    and a log scale). Zero fractions (padding) give finite values; the model masks them."""
    x = frac[..., None]
    lx = jnp.log(jnp.maximum(frac, 1e-4))[..., None] / np.log(1e-4)  # 0 at x = 1, 1 at x = 1e-4
    k = jnp.pi * 2.0 ** jnp.arange(n_freq, dtype=frac.dtype)
    return jnp.concatenate([x, lx, jnp.sin(k * x), jnp.cos(k * x), jnp.sin(k * lx), jnp.cos(k * lx)], axis=-1)


class _EncoderLayer(nn.Module):
    """Pre-LayerNorm transformer encoder layer over element tokens."""

    dim: int
    heads: int
    dropout: float

    @nn.compact
    def __call__(self, h, mask, train: bool):
        a = nn.MultiHeadDotProductAttention(num_heads=self.heads, dropout_rate=self.dropout,
                                            deterministic=not train)(nn.LayerNorm()(h), mask=mask)
        h = h + nn.Dropout(self.dropout, deterministic=not train)(a)
        f = nn.Dense(self.dim)(nn.gelu(nn.Dense(2 * self.dim)(nn.LayerNorm()(h))))
        return h + nn.Dropout(self.dropout, deterministic=not train)(f)


class ElementAttention(nn.Module):
    """Transformer over the present elements of each composition.

    Attributes:
      dim: token width. heads: attention heads. n_layers: encoder layers.
      max_elements: token slots per composition (the most elements any row may have). A row with
        more present elements gets a NaN prediction rather than silently losing elements.
      element_table: optional fixed (n_elements, E) element embedding (e.g. mat2vec rows in ElemNet
        element order), projected to ``dim``; a learned per-element embedding is added to it.
      use_descriptors: feed the columns after the fractions to the readout head.
      n_elements: number of leading fraction columns in the input.
    Returns (B,) predictions in standardised target units.
    """

    dim: int = 64
    heads: int = 4
    n_layers: int = 3
    max_elements: int = 8
    dropout: float = 0.0
    element_table: Any = None
    use_descriptors: bool = False
    n_elements: int = 86

    @nn.compact
    def __call__(self, x, train: bool = False):
        frac_all = x[:, : self.n_elements]
        count = jnp.sum(frac_all > 0, axis=1)
        frac, idx = jax.lax.top_k(frac_all, self.max_elements)  # (B, K) largest fractions first
        present = frac > 0
        h = nn.Embed(self.n_elements, self.dim)(idx)
        if self.element_table is not None:
            table = jnp.asarray(np.asarray(self.element_table), x.dtype)
            h = h + nn.Dense(self.dim)(table[idx])
        h = h + nn.Dense(self.dim)(fraction_encoding(frac))
        mask = nn.make_attention_mask(present, present)
        for _ in range(self.n_layers):
            h = _EncoderLayer(self.dim, self.heads, self.dropout)(h, mask, train)
        h = nn.LayerNorm()(h)
        gate = nn.Dense(1)(nn.gelu(nn.Dense(self.dim)(h)))[..., 0] + jnp.log(jnp.maximum(frac, 1e-12))
        w = jax.nn.softmax(jnp.where(present, gate, -jnp.inf), axis=1)  # Roost-style weighted pooling
        pooled = jnp.sum(w[..., None] * h, axis=1)  # (B, dim)
        if self.use_descriptors and x.shape[1] > self.n_elements:
            pooled = jnp.concatenate([pooled, nn.gelu(nn.Dense(self.dim)(x[:, self.n_elements :]))], axis=1)
        out = nn.Dense(1)(nn.gelu(nn.Dense(self.dim)(nn.gelu(nn.Dense(2 * self.dim)(pooled)))))[:, 0]
        return jnp.where(count <= self.max_elements, out, jnp.nan)
