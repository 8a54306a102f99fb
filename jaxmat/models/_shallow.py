"""Shallow-ensemble heads in one pass: every head's energies, forces and stress from one forward
pass through the shared body and one backward pass with the K heads' cotangents batched.

A shallow ensemble (``jaxmat.models.Ensemble`` of kind "shallow") stacks only its head groups
(default the readout); the body's features do not depend on the head. ``head_results`` evaluates
all K heads on the one forward pass (``jax.vmap`` over the stacked groups leaves the shared body
unbatched) and hands the (K, N) per-atom energies to ``jaxmat.potential.outputs_forces_stress``,
which takes one vector-Jacobian product of them and pulls the K one-hot cotangents back through it
together; forces and stress are derived there, as for every model. The numbers are those of K
separate ``energy_forces_stress`` calls (same formulas; equal to rounding, tested in float64).

Cost: the forward pass is paid once, the backward pass is linear in the cotangent, so each extra
head costs its share of one backward pass (CPU, Si64, pretrained M3GNet, K = 8: see
``experiments/uncertainty/results.md``, "cost").
"""

from __future__ import annotations

import jax

from jaxmat.models._model import Model
from jaxmat.potential import outputs_forces_stress


def head_results(ens, params, graph, compute_stress: bool = True, mode: str = "vmap") -> dict:
    """Per-head ``energy`` (K, G), ``energies`` (K, N), ``forces`` (K, N, 3) and ``stress``
    (K, G, 3, 3) of a shallow ensemble ``ens`` with parameters ``params`` on a padded graph.

    ``mode``: "vmap" pulls the K cotangents back in one batched pass; "sequential" one after
    another through the same saved forward pass (the memory of one backward pass).
    """
    return outputs_forces_stress(lambda p, g: apply_heads(ens, p, g), params, graph, compute_stress, mode=mode)


def apply_heads(ens, params, graph):
    """(K, N) per-atom energies of the K heads (the shared groups unbatched)."""
    shared = {g: v for g, v in params.items() if g not in ens.stacked}
    own = {g: v for g, v in params.items() if g in ens.stacked}
    return jax.vmap(lambda o: Model.apply(ens, {**shared, **o}, graph))(own)
