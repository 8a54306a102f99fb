"""CNN heads for 2D fields: residual conv stages with pooling, global average pool, dense head.

Convolutions pad circularly, so periodic images (e.g. microstructures) have no artificial
borders. (B, H, W) or (B, H, W, C) -> (B,).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class ConvBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+ skip, 1x1 conv where the width changes) -> ReLU."""

    width: int
    residual: bool = True

    @nn.compact
    def __call__(self, x, train: bool):
        bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)  # noqa: E731
        h = nn.relu(bn()(nn.Conv(self.width, (3, 3), padding="CIRCULAR")(x)))
        h = bn()(nn.Conv(self.width, (3, 3), padding="CIRCULAR")(h))
        if self.residual:
            h = h + (x if x.shape[-1] == self.width else nn.Conv(self.width, (1, 1))(x))
        return nn.relu(h)


class CNN(nn.Module):
    """Args: widths (channels of each stage; 2x2 average pooling between stages), blocks (conv
    blocks per stage), residual (skip connections), dense (hidden widths of the head)."""

    widths: Sequence[int] = (16, 32, 64)
    blocks: int = 1
    residual: bool = True
    dense: Sequence[int] = (64,)

    @nn.compact
    def __call__(self, x, train: bool = False):
        if x.ndim == 3:
            x = x[..., None]
        for s, w in enumerate(self.widths):
            for _ in range(self.blocks):
                x = ConvBlock(w, self.residual)(x, train)
            if s < len(self.widths) - 1:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = jnp.mean(x, axis=(1, 2))
        for w in self.dense:
            x = nn.relu(nn.Dense(w)(x))
        return nn.Dense(1)(x)[:, 0]
