"""Geometry inside JAX: edge vectors and lengths from positions, cell and shifts."""

from __future__ import annotations

import jax.numpy as jnp

from jaxmat.graph._types import AtomicGraph


def edge_vectors(g: AtomicGraph):
    """Bond vectors r_ij = pos[j] - pos[i] + shift @ cell[graph of i], shape (E, 3), Angstrom."""
    G = g.graph
    pos = G.nodes["positions"]
    cell = G.globals["cell"][G.nodes["graph_index"][G.senders]]  # (E, 3, 3)
    offset = jnp.einsum("ei,eij->ej", G.edges["shifts"], cell)
    return pos[G.receivers] - pos[G.senders] + offset


def masked_norm(vectors, mask, fill: float = 1.0):
    """Euclidean norm (..., 3) -> (...) that is ``fill`` where ``mask`` is False.

    The square root never sees a zero argument for masked entries, so padded zero-length
    vectors give finite values and finite (zero) gradients.
    """
    sq = jnp.sum(vectors * vectors, axis=-1)
    return jnp.sqrt(jnp.where(mask, sq, fill * fill))
