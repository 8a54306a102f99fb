"""Composition-vector regressors: ElemNet-style deep MLP, IRNet-style residual MLP, BRNet.

All map (B, F) features -> (B,) predictions (in standardised target units; the fit module
de-standardises). Hidden layers are Dense -> BatchNorm -> ReLU (-> Dropout where configured).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxmat.composition._attention import ElementAttention

#: ElemNet's 17-layer width profile (Jha et al. 2018): 4x1024, 3x512, 3x256, 3x128, 2x64, 1x32 (+ output)
ELEMNET_WIDTHS = (1024,) * 4 + (512,) * 3 + (256,) * 3 + (128,) * 3 + (64,) * 2 + (32,)


def scaled_widths(scale: float, base: Sequence[int] = ELEMNET_WIDTHS) -> tuple[int, ...]:
    """``base`` widths times ``scale`` (at least 4 units each)."""
    return tuple(max(4, int(round(w * scale))) for w in base)


class _Layer(nn.Module):
    width: int
    batch_norm: bool = True
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(self.width)(x)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        if self.dropout:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return x


class ElemNetMLP(nn.Module):
    """Plain deep MLP (ElemNet-style): one hidden layer per entry of ``widths``, then Dense(1).
    With ``residual`` every hidden layer gets a skip connection (a linear projection where the
    width changes): the IRNet-style network."""

    widths: Sequence[int] = ELEMNET_WIDTHS
    batch_norm: bool = True
    dropout: float = 0.0
    residual: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        for w in self.widths:
            h = _Layer(w, self.batch_norm, self.dropout)(x, train)
            if self.residual:
                h = h + (x if x.shape[-1] == w else nn.Dense(w, use_bias=False)(x))
            x = h
        return nn.Dense(1)(x)[:, 0]


class IRNet(ElemNetMLP):
    """Residual MLP without branches (IRNet-style, Jha et al. 2019)."""

    residual: bool = True


class BranchedBlock(nn.Module):
    """A branched residual block: ``n_branches`` parallel stacks of ``depth`` layers of width
    ``width`` read the same input; their outputs are summed and added to the (projected) input."""

    width: int
    n_branches: int = 2
    depth: int = 1
    batch_norm: bool = True
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool):
        skip = x if x.shape[-1] == self.width else nn.Dense(self.width, use_bias=False)(x)
        joined = 0.0
        for _ in range(self.n_branches):
            h = x
            for _ in range(self.depth):
                h = _Layer(self.width, self.batch_norm, self.dropout)(h, train)
            joined = joined + h
        return joined + skip


class BRNet(nn.Module):
    """BRNet (Gupta et al., Sci. Rep. 2023): a stack of branched residual blocks, one per entry of
    ``widths``, then Dense(1). iBRNet is BRNet trained with several callbacks at once (see fit)."""

    widths: Sequence[int] = (1024, 512, 256, 128, 64, 32)
    n_branches: int = 2
    depth: int = 1
    batch_norm: bool = True
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        for w in self.widths:
            x = BranchedBlock(w, self.n_branches, self.depth, self.batch_norm, self.dropout)(x, train)
        return nn.Dense(1)(x)[:, 0]


ARCHITECTURES = {"elemnet": ElemNetMLP, "irnet": IRNet, "brnet": BRNet, "attention": ElementAttention}


def make_regressor(name: str, **kwargs) -> nn.Module:
    try:
        cls = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown composition model {name!r}; known: {sorted(ARCHITECTURES)}") from None
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return cls(**kwargs)


def count_params(variables) -> int:
    import jax

    return int(sum(x.size for x in jax.tree_util.tree_leaves(variables["params"])))


#: width profile each architecture is scaled from when matching a parameter budget
BASE_WIDTHS = {"elemnet": ELEMNET_WIDTHS, "irnet": ELEMNET_WIDTHS, "brnet": (1024, 512, 256, 128, 64, 32)}


def match_budget(name: str, n_features: int, budget: int, **kwargs) -> tuple[dict, int]:
    """Scale the architecture's width profile so its parameter count is closest to ``budget``.
    Returns (constructor kwargs with ``widths``, parameter count). For ``attention`` the token
    width ``dim`` (a multiple of the head count) is chosen instead."""
    import jax

    def shapes_of(kw):
        return jax.eval_shape(lambda: make_regressor(name, **kw).init(jax.random.PRNGKey(0), jnp.zeros((2, n_features))))

    if name == "attention":  # the count grows with dim: bisect on dim = k * heads, k = 1 .. 1024 // heads
        heads = kwargs.get("heads", ElementAttention.heads)

        def count_dim(k):
            kw = {**kwargs, "dim": k * heads}
            return kw, count_params(shapes_of(kw))

        lo, hi = 1, 1024 // heads  # smallest k whose count reaches the budget (or the largest k)
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if count_dim(mid)[1] < budget else (lo, mid)
        return min([count_dim(k) for k in (lo - 1, lo) if k >= 1], key=lambda r: abs(r[1] - budget))

    def count(scale):
        kw = {**kwargs, "widths": scaled_widths(scale, BASE_WIDTHS[name])}
        return kw, count_params(shapes_of(kw))

    lo, hi = 1e-3, 8.0
    for _ in range(24):  # geometric bisection on the width scale (ratio 8000 -> 1 + 5e-7)
        mid = (lo * hi) ** 0.5
        if count(mid)[1] < budget:
            lo = mid
        else:
            hi = mid
    return min((count(lo), count(hi)), key=lambda r: abs(r[1] - budget))
