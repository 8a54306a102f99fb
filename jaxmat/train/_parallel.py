"""Training across devices and hosts with JAX's own SPMD runtime (``jax.sharding``).

One 1-D mesh (axis ``"data"``) over the first ``run.devices`` devices of ``jax.devices()`` (all
processes' devices after ``jax.distributed.initialize``). Two layouts:

* **data parallel** (one model): each optimizer step's global batch is the group of structures a
  one-device run would train on (``epoch_groups`` with the same budget, so steps, learning-rate
  schedule, checkpoints and ``--resume`` do not depend on the device count), split into one
  consecutive chunk per device, each padded to one per-device budget and stacked on a leading axis
  sharded over the mesh. Parameters, optimizer state and EMA are replicated; each device evaluates
  its share as a one-device step would (``jax.shard_map``), divided by the label counts of the
  whole global batch, and the shares' losses and gradients are summed: the one-device loss of the
  global batch.
* **members** (a deep ensemble with at least as many members as devices, a multiple of them): the
  member axis of parameters, optimizer states and EMAs is sharded; each device trains its members
  on the whole batch (the step ``vmap``-ped over members).

Each process builds only the chunks of its own devices (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmat.data import Batch, batch_budget, make_batch
from jaxmat.errors import ConfigError
from jaxmat.potential import energy_forces_stress
from jaxmat.train._loss import label_counts, loss_and_metrics, potential_terms

AXIS = "data"


def resolve_devices(rcfg, ens, log=print) -> tuple[int, str]:
    """(number of devices, layout "single" | "data" | "members") for the run and ensemble sections
    ``rcfg`` (run.devices) and ``ens`` of this run's config."""
    available = jax.device_count()
    asked = rcfg.devices
    n = available if asked is None else int(asked)
    if n > available:
        raise ConfigError(f"config: run.devices = {n}, but only {available} {jax.default_backend()} device(s) are "
                          "available (all processes)")
    if jax.process_count() > 1:  # every process takes part in one data-parallel model
        if ens.kind != "none":
            raise ConfigError(f"config: ensemble.kind = {ens.kind!r}: a multi-process run ({jax.process_count()} "
                              "processes) trains one model; train an ensemble on one host (its members split over "
                              "that host's devices)")
        if n != available:
            raise ConfigError(f"config: run.devices = {n}: with {jax.process_count()} processes every device takes "
                              f"part (leave run.devices unset or set it to {available})")
        return n, "data"
    if n == 1:
        return 1, "single"
    if ens.kind == "shallow":
        if asked is not None:
            raise ConfigError(f"config: run.devices = {n}: a shallow ensemble trains on one device (set run.devices 1)")
        log(f"a shallow ensemble trains on one device ({available} available)")
        return 1, "single"
    if ens.kind == "deep":
        if ens.size % n == 0:
            return n, "members"
        if asked is not None:
            raise ConfigError(f"config: run.devices = {n}: a deep ensemble's members are split over the devices, so "
                              f"ensemble.size ({ens.size}) must be a multiple of run.devices")
        n = max(d for d in range(1, min(n, ens.size) + 1) if ens.size % d == 0)
        log(f"deep ensemble of {ens.size} members on {n} of {available} devices (members split evenly)")
        return n, ("members" if n > 1 else "single")
    return n, "data"


def make_mesh(n: int) -> Mesh:
    return Mesh(np.array(jax.devices()[:n]), (AXIS,))


def replicated(mesh: Mesh, tree):
    """``tree`` replicated on every device of the mesh."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)


def member_sharded(mesh: Mesh, tree):
    """Every leaf's leading (member) axis split over the mesh."""
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)


def device_budget(graphs, graphs_per_batch: int, n: int):
    """Padding budget of one device's chunk: it holds any ceil(graphs_per_batch / n) structures."""
    return batch_budget(graphs, math.ceil(graphs_per_batch / n))


def chunks(group, n: int) -> list[list[int]]:
    """A global batch's frame indices split into n consecutive chunks (sizes differ by at most one)."""
    return [list(c) for c in np.array_split(np.asarray(group, dtype=int), n)]


def local_positions(mesh: Mesh) -> list[int]:
    """Positions on the mesh axis of this process's devices."""
    return [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]


def stacked_batch(mesh: Mesh, group, frames, graphs, budget, dtype) -> Batch:
    """The global batch ``group`` as one Batch whose leaves have a leading device axis, sharded over
    the mesh; this process pads only its own devices' chunks."""
    parts = chunks(group, mesh.devices.size)
    mine = [make_batch(parts[i], frames, graphs, budget, dtype) if parts[i] else _empty(group, frames, graphs, budget, dtype)
            for i in local_positions(mesh)]
    local = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *mine)
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def _empty(group, frames, graphs, budget, dtype) -> Batch:
    """A device's share of a batch with fewer structures than devices: one structure of the batch
    with every label masked and weighted 0, so it adds nothing to the loss, gradients or metrics."""
    b = make_batch(group[:1], frames, graphs, budget, dtype)
    lab = b.labels
    zero = lambda x: np.zeros_like(x)  # noqa: E731
    return b._replace(labels=lab._replace(energy_mask=zero(lab.energy_mask), forces_mask=zero(lab.forces_mask),
                                          stress_mask=zero(lab.stress_mask), weight=zero(lab.weight),
                                          atom_weight=zero(lab.atom_weight)))


def stacked_loss(apply, lcfg, kind: str, mesh: Mesh):
    """``loss_fn(params, stacked_batch)`` equal to ``loss_and_metrics`` of the concatenated batch.

    ``jax.shard_map``: each device evaluates its own share exactly as a one-device step would (no
    batched matmuls), with the loss's denominators summed over all devices first; the shares'
    losses and error sums are then summed (``psum``), and so are the parameter gradients."""
    def local(params, batch):
        b = jax.tree_util.tree_map(lambda x: x[0], batch)  # this device's share (leading axis 1)
        lab = b.labels
        if kind == "graph":
            totals = jax.lax.psum(label_counts(lab), AXIS)
            loss, metrics = loss_and_metrics(params, b, apply, lcfg, "graph", totals)
        else:
            totals = jax.lax.psum(label_counts(lab), AXIS)
            out = energy_forces_stress(apply, params, b.graph, lcfg.stress_weight > 0)
            loss, metrics = potential_terms(out, lab, lcfg, totals)
        return jax.lax.psum((loss, metrics), AXIS)

    return jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec(AXIS)),
                         out_specs=PartitionSpec())


def is_writer() -> bool:
    """Only process 0 writes checkpoints, metrics, plots and models."""
    return jax.process_index() == 0
