"""Energy, forces and stress from a per-atom energy model; the one place they are derived.

Units and signs (used throughout jaxmat):

* energy in eV; forces F = -dE/dR in eV/A;
* stress sigma = (1/V) dE/d(epsilon) in eV/A^3, where the (non-symmetric) strain epsilon deforms
  the cell and the positions as ``x -> x @ (I + epsilon)``; this is ASE's sign (negative under
  compression). Voigt order is (xx, yy, zz, yz, xz, xy), as in ASE.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxmat.graph import AtomicGraph

VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def _strained(g: AtomicGraph, strain) -> AtomicGraph:
    """Apply a per-graph strain (G, 3, 3) to the positions and cells."""
    G = g.graph
    deform = jnp.eye(3, dtype=strain.dtype) + strain
    pos = jnp.einsum("ni,nij->nj", G.nodes["positions"], deform[G.nodes["graph_index"]])
    cell = jnp.einsum("gij,gjk->gik", G.globals["cell"], deform)
    graph = G._replace(nodes={**G.nodes, "positions": pos}, globals={**G.globals, "cell": cell})
    return AtomicGraph(graph, g.triplets)


def graph_totals(values, graph_index, n_graph: int):
    """Per-graph sums (G,) of per-node values (N,), accurate in float32 for large graphs.

    A plain float32 segment sum of 2,048 per-atom energies of -5.4 eV drifts by ~0.1 eV (each
    addition rounds at the running total's magnitude). Here the first sum fixes each graph's mean;
    the deviations from it, small numbers, are summed again and added back, so the error is about
    one rounding of the total (~1e-3 eV for 10^4 eV, 5e-7 eV/atom). Hosts that need more
    (``JaxmatCalculator``, ``Model.predict``) sum the per-atom values in float64 themselves.
    """
    first = jax.ops.segment_sum(values, graph_index, num_segments=n_graph)
    count = jax.ops.segment_sum(jnp.ones_like(values), graph_index, num_segments=n_graph)
    mean = first / jnp.maximum(count, 1)
    residual = jax.ops.segment_sum(values - mean[graph_index], graph_index, num_segments=n_graph)
    # the barrier keeps XLA from merging the two scatter-adds into one (which undoes the compensation)
    first, residual = jax.lax.optimization_barrier((first, residual))
    return first + residual


def energy_forces_stress(apply_fn: Callable, params, g: AtomicGraph, compute_stress: bool = True):
    """Evaluate a model and its derivatives on a padded (batched) graph.

    Args:
      apply_fn: ``apply_fn(params, graph) -> per-atom energies (N,)`` in eV.
      params: model parameters.
      g: padded graph (jax arrays); the float dtype of positions sets the precision.
      compute_stress: also differentiate with respect to strain.

    Returns a dict with ``energy`` (G,), ``energies`` (N,), ``forces`` (N, 3) and, if
    ``compute_stress``, ``stress`` (G, 3, 3) in eV/A^3 (zero on padding graphs and on graphs
    not periodic in all three directions). Entries of
    padding graphs/nodes are zero.
    """
    G = g.graph
    dtype = G.nodes["positions"].dtype
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, dtype), params)
    n_graph = G.n_node.shape[0]
    # zero strain (G, 3, 3) made from the cells, not jnp.zeros: inside jax.shard_map (data-parallel
    # training) a constant is the same on every device, and its gradient would be summed over them
    strain0 = G.globals["cell"].astype(dtype) * 0

    def total(positions, strain):
        gg = g._replace(graph=G._replace(nodes={**G.nodes, "positions": positions}))
        if compute_stress:
            gg = _strained(gg, strain)
        e_atom = apply_fn(params, gg)
        return jnp.sum(e_atom), e_atom

    argnums = (0, 1) if compute_stress else 0
    grads, e_atom = jax.grad(total, argnums=argnums, has_aux=True)(G.nodes["positions"], strain0)
    dE_dpos = grads[0] if compute_stress else grads
    energy = graph_totals(e_atom, G.nodes["graph_index"], n_graph)
    out = {"energy": energy, "energies": e_atom, "forces": -dE_dpos * G.nodes["mask"][:, None]}
    if compute_stress:
        # stress only exists for cells periodic in all directions (others, e.g. molecules with a
        # zero cell, get 0 instead of a division by a zero volume)
        periodic = jnp.all(G.globals["pbc"], axis=1) & G.globals["mask"]
        volume = jnp.where(periodic, jnp.abs(jnp.linalg.det(G.globals["cell"])), 1.0)
        stress = grads[1] / volume[:, None, None]
        out["stress"] = 0.5 * (stress + jnp.swapaxes(stress, 1, 2)) * periodic[:, None, None]
    return out


def to_voigt(stress):
    """(..., 3, 3) -> (..., 6) in ASE Voigt order (xx, yy, zz, yz, xz, xy); numpy or jax arrays."""
    rows, cols = zip(*VOIGT)
    return stress[..., list(rows), list(cols)]
