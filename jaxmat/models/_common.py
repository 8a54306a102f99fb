"""Helpers shared by the graph model families."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_numbers


def type_table(element_types: Sequence[str]) -> np.ndarray:
    """Atomic number -> type index (position in ``element_types``); unknown and padding -> 0.
    Hosts validate species before a graph reaches a model (``Model.check_species``)."""
    table = np.zeros(119, np.int32)
    for k, s in enumerate(element_types):
        table[atomic_numbers[s]] = k
    return table


def segment_mean(x, segments, mask, num_segments: int):
    """Mean of the rows of ``x`` (M, F) where ``mask``, per segment -> (num_segments, F);
    0 for a segment with no rows (e.g. an atom without neighbours)."""
    w = mask.astype(x.dtype)
    total = jax.ops.segment_sum(x * w[:, None], segments, num_segments=num_segments)
    count = jax.ops.segment_sum(w, segments, num_segments=num_segments)
    return total / jnp.maximum(count, 1.0)[:, None]
