"""``Engine.md`` with its replicas split over devices: one ``jax.shard_map`` call per chunk.

The replicas are cut into D consecutive groups (sizes differ by at most one), one per device of a
1-D mesh. Each group has its own padded lists, state and batch (one common capacity, so they stack
on a leading axis sharded over the mesh); each device runs the engine's own chunk (the same
``lax.while_loop`` as on one device) on its group, with its own step count and stop status. The
host rebuilds only the groups whose lists went stale and calls again with each group's remaining
steps until every group reaches the chunk's end; then it checks, logs and writes every replica as
the one-device driver does. The numbers are those of the one-device run (the noise depends only on
replica seed, step and atom; a rebuild does not change a trajectory).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxmat.errors import ConfigError, RefusedStructure, SimulationError
from jaxmat.guard import runaway_temperature
from jaxmat.simulate._integrators import MDState
from jaxmat.simulate._layout import join, make_batch, split

AXIS = "replicas"
MD_NODE = ("positions", "momenta", "forces")


def groups_of(n_replicas: int, devices: int) -> list[list[int]]:
    if devices < 1 or devices > jax.device_count():
        raise ConfigError(f"Engine.md: devices = {devices}: expected 1..{jax.device_count()} (the devices JAX sees)")
    if n_replicas < devices:
        raise ConfigError(f"Engine.md: {n_replicas} replica(s) cannot be split over {devices} devices")
    return [list(g) for g in np.array_split(np.arange(n_replicas), devices)]


def _stack(trees, sharding):
    return jax.tree_util.tree_map(lambda *xs: jax.device_put(np.stack([np.asarray(x) for x in xs]), sharding), *trees)


def run_md_sharded(engine, systems, temps, seeds, guards, dyn, s, chunk, trajectory, printer, progress, devices,
                   masks=None):
    from jaxmat.simulate._engine import EYE, _cast, _writers, new_log, thin_skin

    R = len(systems)
    groups = groups_of(R, devices)
    mesh = Mesh(np.array(jax.devices()[:devices]), (AXIS,))
    shard = NamedSharding(mesh, PartitionSpec(AXIS))
    sizes = [[len(systems[r]) for r in g] for g in groups]
    padding = {"cell": EYE, "energy": 0.0, "stress": np.zeros((3, 3)), "thermostat": 0.0}
    rebuilds_before = engine.n_rebuilds
    params = engine._device_params()

    def group_lists(g):
        try:
            return engine._lists([systems[r] for r in groups[g]], printer)
        except RefusedStructure as err:
            r = groups[g][err.index]
            raise type(err.cause)(f"replica {r} ({systems[r].get_chemical_formula()}): {err.cause}") from err

    def all_lists():
        while True:  # one common capacity: rebuild until no group grows it
            cap = engine.capacity
            out = [group_lists(g) for g in range(devices)]
            if engine.capacity == cap:
                return out

    def batches():
        return [make_batch([systems[r] for r in g], engine.capacity, engine.dtype, [seeds[r] for r in g],
                           [temps[r] for r in g], None if masks is None else [masks[r] for r in g]) for g in groups]

    lists = all_lists()
    pieces = [{"positions": a.positions, "momenta": a.get_momenta(), "forces": np.zeros((len(a), 3)),
               "cell": a.cell.array, "energy": np.array(0.0), "stress": np.zeros((3, 3)),
               "thermostat": np.array(0.0), "step": np.array(0, np.int32)} for a in systems]
    states = [join(MDState, [_cast(pieces[r], engine.dtype) for r in g], MD_NODE, engine.capacity, padding)
              for g in groups]
    batch = _stack(batches(), shard)
    state, stacked_lists = _stack(states, shard), _stack(lists, shard)
    limits = (jnp.asarray(max(runaway_temperature(t, s.guard_limits) for t in temps), engine.dtype),
              jnp.asarray(s.max_energy_drift, engine.dtype), jnp.asarray(s.pressure_ev_a3, engine.dtype))
    fn = _chunk_fn(engine, mesh, dyn)

    def pieces_of(st):
        host = jax.device_get(st)
        out = [None] * R
        for g, grp in enumerate(groups):
            for r, p in zip(grp, split(jax.tree_util.tree_map(lambda x: x[g], host), sizes[g], MD_NODE)):
                out[r] = p
        return out

    def rebuild(st, stale):
        """Rebuild the stale groups' lists at their last good state (all groups if the capacity grows)."""
        nonlocal lists, batch
        pieces = pieces_of(st)
        for p, a in zip(pieces, systems):
            a.positions, a.cell = p["positions"], p["cell"]
        cap = engine.capacity
        for g in np.flatnonzero(stale):
            lists[g] = group_lists(g)
        if engine.capacity != cap:  # grown: every group to the new capacity
            lists = all_lists()
            batch = _stack(batches(), shard)
        st = _stack([join(MDState, [pieces[r] for r in g], MD_NODE, engine.capacity, padding) for g in groups], shard)
        return st, _stack(lists, shard)

    flat_sizes = [len(a) for a in systems]
    writers = _writers(trajectory, R, systems)
    log = new_log(s)
    bar = tqdm(total=s.steps, unit="step", disable=not progress, leave=False)
    zeros = np.zeros(devices, np.int32)
    try:
        e0 = jax.device_put(np.zeros((devices, engine.capacity.n_graph)), shard).astype(engine.dtype)
        state, _, _, e0 = fn(params, stacked_lists, state, batch, jax.device_put(zeros, shard), jnp.asarray(True),
                             e0, limits)
        _check_and_log(engine, pieces_of(state), guards, flat_sizes, 0, s, log, writers, systems, printer,
                       time.perf_counter(), 0)
        step, t_last, since = 0, time.perf_counter(), 0
        while step < s.steps:
            target = step + min(chunk - step % chunk, s.steps - step)
            reached = np.full(devices, step, np.int32)
            just_rebuilt = np.zeros(devices, bool)
            while np.any(reached < target):
                n = jax.device_put((target - reached).astype(np.int32), shard)
                state, done, status, e0 = fn(params, stacked_lists, state, batch, n, jnp.asarray(False), e0, limits)
                done, status = (np.asarray(x) for x in jax.device_get((done, status)))
                reached += done
                just_rebuilt &= done == 0
                if np.any(status == 2):  # a blow-up: the guard names the replica and step
                    _check_and_log(engine, pieces_of(state), guards, flat_sizes, int(np.max(reached)), s, log,
                                   writers, systems, printer, t_last, 0, write=False)
                    g = int(np.flatnonzero(status == 2)[0])
                    raise SimulationError(f"md: the device stopped replicas {groups[g]} at step {int(reached[g])}: "
                                          "non-finite numbers, a runaway temperature or energy drift")
                if np.any(status == 1):
                    if np.any((status == 1) & (done == 0) & just_rebuilt):
                        raise ConfigError(thin_skin(engine.skin, s.timestep, int(np.min(reached))))
                    just_rebuilt = status == 1
                    engine.n_rebuilds += int(np.sum(status == 1))
                    state, stacked_lists = rebuild(state, status == 1)
            done_now = int(np.min(reached)) - step
            step, since = step + done_now, since + done_now
            bar.update(done_now)
            pieces = pieces_of(state)
            _check_and_log(engine, pieces, guards, flat_sizes, int(np.min(reached)), s, log, writers, systems,
                           printer, t_last, since, write=step % s.log_every == 0 or step == s.steps)
            if step % s.log_every == 0 or step == s.steps:
                t_last, since = time.perf_counter(), 0
    finally:
        bar.close()
        for w in writers:
            w.close()
    return engine._md_result(log, rebuilds_before, pieces_of(state), systems)


def _chunk_fn(engine, mesh, dyn):
    """The engine's chunk on each device's group (cached per mesh and integrator)."""
    key = (tuple(d.id for d in mesh.devices.flat), dyn)
    cache = engine.__dict__.setdefault("_sharded_chunks", {})
    if key not in cache:
        spec, rep = PartitionSpec(AXIS), PartitionSpec()

        def local(params, lists, state, batch, n, fresh, e0, limits):
            first = lambda t: jax.tree_util.tree_map(lambda x: x[0], t)  # noqa: E731
            st, i, status, e = engine._md_chunk(params, first(lists), first(state), first(batch), dyn, n[0], fresh,
                                                e0[0], limits)
            return jax.tree_util.tree_map(lambda x: x[None], (st, i, status, e))

        cache[key] = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(rep, spec, spec, spec, spec, rep, spec, rep),
                                           out_specs=spec, check_vma=False))
    return cache[key]


def _check_and_log(engine, pieces, guards, sizes, step, s, log, writers, systems, printer, t_last, n_done, write=True):
    """The one-device driver's checks (``MDGuard``, naming the replica) and log line, from pieces."""
    from jaxmat.simulate._engine import check_replicas

    check_replicas(pieces, guards, step)
    if write:
        engine._log_pieces(pieces, step, s, log, writers, systems, sizes, printer, t_last, n_done)
