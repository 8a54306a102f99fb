"""A physics-generated image dataset: Cahn-Hilliard microstructures labelled with their effective
conductivity (phase contrast 1:10), cached as .npz."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.microstructure._cahn_hilliard import evolve, initial_field
from jaxmat.microstructure._conductivity import effective_conductivity, hashin_shtrikman_2d


class Microstructures(NamedTuple):
    """images (S, n, n) float32 in {0, 1} (1: conducting phase); fraction (S,) of phase 1;
    conductivity (S,) effective (mean of xx, yy); hs_lower, hs_upper (S,); steps (S,) coarsening
    steps; mixing (S,) initial mixing fraction."""

    images: np.ndarray
    fraction: np.ndarray
    conductivity: np.ndarray
    hs_lower: np.ndarray
    hs_upper: np.ndarray
    steps: np.ndarray
    mixing: np.ndarray


def generate(n_samples: int, size: int = 64, seed: int = 0, steps: Sequence[int] = (150, 400, 1000, 2500),
             mixing=(0.25, 0.75), dt: float = 0.5, contrast: float = 10.0, chunk: int = 64) -> Microstructures:
    """Samples with seeded mixing fractions (uniform in ``mixing``) and coarsening times (drawn from
    ``steps``); each is thresholded at c = 0 and solved for its conductivity (float64 inside)."""
    rng = np.random.default_rng(seed)
    mix = rng.uniform(*mixing, n_samples)
    n_steps = rng.choice(np.asarray(steps), n_samples)
    keys = jax.random.split(jax.random.PRNGKey(seed), n_samples)
    images = np.zeros((n_samples, size, size), np.float32)
    cond = np.zeros(n_samples)
    with jax.enable_x64(True):
        init = jax.jit(jax.vmap(lambda k, f: initial_field(k, size, f)))
        solve = jax.jit(jax.vmap(lambda p: effective_conductivity(p, 1.0, contrast)))
        runs = {int(s): jax.jit(jax.vmap(lambda c, s=int(s): evolve(c, s, dt))) for s in np.unique(n_steps)}
        for s, run in runs.items():
            idx = np.flatnonzero(n_steps == s)
            for start in range(0, idx.size, chunk):
                sel = idx[start : start + chunk]
                c = run(init(keys[sel], jnp.asarray(mix[sel])))
                phase = (c > 0).astype(jnp.float64)
                images[sel] = np.asarray(phase, np.float32)
                cond[sel] = np.asarray(solve(phase))
    frac = images.mean(axis=(1, 2)).astype(np.float64)
    lo, hi = hashin_shtrikman_2d(frac, 1.0, contrast)
    return Microstructures(images, frac, cond, lo, hi, n_steps, mix)


def load_or_generate(cache_dir, n_samples: int, **kwargs) -> Microstructures:
    """``generate`` once per argument set; later calls read ``cache_dir/microstructures_<hash>.npz``."""
    spec = json.dumps({"n_samples": n_samples, **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}},
                      sort_keys=True)
    path = Path(cache_dir) / f"microstructures_{hashlib.sha256(spec.encode()).hexdigest()[:12]}.npz"
    if path.is_file():
        with np.load(path) as z:
            return Microstructures(*(z[f] for f in Microstructures._fields))
    data = generate(n_samples, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **data._asdict())
    tmp.replace(path)
    return data
