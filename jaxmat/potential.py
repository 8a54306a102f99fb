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
    return _assemble(G, e_atom, grads[0] if compute_stress else grads, grads[1] if compute_stress else None)


def _assemble(G, e_atom, dE_dpos, dE_dstrain):
    """The result dict of ``energy_forces_stress`` from per-atom energies (N,) and the gradients of
    their sum with respect to the positions (N, 3) and, if not None, the strain (G, 3, 3)."""
    n_graph = G.n_node.shape[0]
    energy = graph_totals(e_atom, G.nodes["graph_index"], n_graph)
    out = {"energy": energy, "energies": e_atom, "forces": -dE_dpos * G.nodes["mask"][:, None]}
    if dE_dstrain is not None:
        # stress only exists for cells periodic in all directions (others, e.g. molecules with a
        # zero cell, get 0 instead of a division by a zero volume)
        periodic = jnp.all(G.globals["pbc"], axis=1) & G.globals["mask"]
        volume = jnp.where(periodic, jnp.abs(jnp.linalg.det(G.globals["cell"])), 1.0)
        stress = dE_dstrain / volume[:, None, None]
        out["stress"] = 0.5 * (stress + jnp.swapaxes(stress, 1, 2)) * periodic[:, None, None]
    return out


def outputs_forces_stress(apply_fn: Callable, params, g: AtomicGraph, compute_stress: bool = True,
                          n_grad: int | None = None, mode: str = "vmap"):
    """``energy_forces_stress`` of M per-atom outputs that share one forward pass (shallow-ensemble
    heads, last-layer feature projections): one forward, then the gradients of the first ``n_grad``
    outputs (default all) from one backward pass with their cotangents batched.

    Args:
      apply_fn: ``apply_fn(params, graph) -> (M, N)`` per-atom values (eV for energies).
      n_grad: how many leading outputs get forces and stress (the others only their values).
      mode: "vmap" (the n_grad cotangents in one batched backward pass) or "sequential"
        (``lax.map``: one cotangent after another through the same saved forward, memory of one).

    Returns ``energy`` (M, G), ``energies`` (M, N), and for the first n_grad outputs ``forces``
    (n_grad, N, 3) and, if ``compute_stress``, ``stress`` (n_grad, G, 3, 3): row m is exactly
    ``energy_forces_stress`` of output m (same units, signs, masks and symmetrisation).
    """
    G = g.graph
    dtype = G.nodes["positions"].dtype
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, dtype), params)
    strain0 = G.globals["cell"].astype(dtype) * 0  # (see energy_forces_stress)

    def outputs(positions, strain):
        gg = g._replace(graph=G._replace(nodes={**G.nodes, "positions": positions}))
        return apply_fn(params, _strained(gg, strain) if compute_stress else gg)

    e_atoms, pullback = jax.vjp(outputs, G.nodes["positions"], strain0)
    M = e_atoms.shape[0]
    n_grad = M if n_grad is None else int(n_grad)
    onehot = jnp.broadcast_to(jnp.eye(M, dtype=e_atoms.dtype)[:n_grad, :, None], (n_grad,) + e_atoms.shape)
    dpos, dstrain = (jax.lax.map(pullback, onehot) if mode == "sequential" else jax.vmap(pullback)(onehot))
    rows = jax.vmap(lambda e, dp, ds: _assemble(G, e, dp, ds if compute_stress else None))(
        e_atoms[:n_grad], dpos, dstrain)
    if n_grad < M:
        rest = jax.vmap(lambda e: graph_totals(e, G.nodes["graph_index"], G.n_node.shape[0]))(e_atoms[n_grad:])
        rows["energy"] = jnp.concatenate([rows["energy"], rest])
        rows["energies"] = e_atoms
    return rows


def to_voigt(stress):
    """(..., 3, 3) -> (..., 6) in ASE Voigt order (xx, yy, zz, yz, xz, xy); numpy or jax arrays."""
    rows, cols = zip(*VOIGT)
    return stress[..., list(rows), list(cols)]
