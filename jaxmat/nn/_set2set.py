"""Set2Set readout (Vinyals et al. 2016) over the segments of a padded graph."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class LSTMCell(nn.Module):
    """One LSTM layer with PyTorch's gate order (i, f, g, o) and separate input/hidden biases,
    so converted weights map one to one. (x (B, F), (h, c) (B, H)) -> new (h, c)."""

    hidden: int

    @nn.compact
    def __call__(self, x, carry):
        h, c = carry
        H = self.hidden
        w_ih = self.param("kernel_ih", nn.initializers.lecun_normal(), (x.shape[-1], 4 * H))
        w_hh = self.param("kernel_hh", nn.initializers.orthogonal(), (H, 4 * H))
        b_ih = self.param("bias_ih", nn.initializers.zeros, (4 * H,))
        b_hh = self.param("bias_hh", nn.initializers.zeros, (4 * H,))
        dt = x.dtype
        z = x @ w_ih.astype(dt) + h @ w_hh.astype(dt) + (b_ih + b_hh).astype(dt)
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return h, c


def segment_softmax(logits, segments, mask, num_segments: int):
    """Softmax of ``logits`` (M,) within each segment, over entries where ``mask``; 0 elsewhere.
    An empty segment gets no weights (its weighted sum is 0)."""
    neg = jnp.where(mask, logits, -jnp.inf)
    top = jax.ops.segment_max(neg, segments, num_segments=num_segments)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    ex = jnp.where(mask, jnp.exp(jnp.where(mask, logits - top[segments], 0.0)), 0.0)
    den = jax.ops.segment_sum(ex, segments, num_segments=num_segments)
    return ex / jnp.where(den > 0, den, 1.0)[segments]


class Set2Set(nn.Module):
    """Set2Set: ``n_iters`` LSTM steps, each attending over the set members of every segment.

    ``__call__(x (M, F), segments (M,) int, mask (M,) bool, num_segments)`` -> (num_segments, 2F):
    ``q_star = [q, sum_m softmax(x_m . q) x_m]``. A segment with no members reads out ``[q, 0]``.
    """

    n_iters: int = 2

    @nn.compact
    def __call__(self, x, segments, mask, num_segments: int):
        F = x.shape[-1]
        cell = LSTMCell(F, name="lstm")
        h = c = jnp.zeros((num_segments, F), x.dtype)
        q_star = jnp.zeros((num_segments, 2 * F), x.dtype)
        for _ in range(self.n_iters):
            h, c = cell(q_star, (h, c))
            alpha = segment_softmax(jnp.sum(x * h[segments], axis=-1), segments, mask, num_segments)
            r = jax.ops.segment_sum(alpha[:, None] * x, segments, num_segments=num_segments)
            q_star = jnp.concatenate([h, r], axis=-1)
        return q_star
