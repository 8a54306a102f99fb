"""``Engine.md`` with its replicas split over devices: one ``jax.shard_map`` call per chunk.

The replicas are cut into D consecutive groups (sizes differ by at most one), one per device of a
1-D mesh. Each group has its own padded lists, state and batch (one common capacity, so they stack
on a leading axis sharded over the mesh); each device runs the engine's own chunk (the same
``lax.while_loop`` as on one device) on its group, with its own step count and stop status. The
host rebuilds only the groups whose lists went stale and calls again with each group's remaining
steps until every group reaches the chunk's end; then it checks, logs and writes every replica as
the one-device driver does (``jaxmat.simulate._host``). The numbers are those of the one-device run
(the noise depends only on replica seed, step and atom; a rebuild does not change a trajectory).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmat.errors import ConfigError, SimulationError
from jaxmat.simulate._host import MD_NODE, MDLog, MDRun, limits, md_state, replica_lists, start_pieces, thin_skin
from jaxmat.simulate._layout import pack_systems, unpack_systems

AXIS = "replicas"


def groups_of(n_replicas: int, devices: int) -> list[list[int]]:
    if devices < 1 or devices > jax.device_count():
        raise ConfigError(f"Engine.md: devices = {devices}: expected 1..{jax.device_count()} (the devices JAX sees)")
    if n_replicas < devices:
        raise ConfigError(f"Engine.md: {n_replicas} replica(s) cannot be split over {devices} devices")
    return [list(g) for g in np.array_split(np.arange(n_replicas), devices)]


def _stack(trees, sharding):
    return jax.tree_util.tree_map(lambda *xs: jax.device_put(np.stack([np.asarray(x) for x in xs]), sharding), *trees)


class _Groups:
    """The replica groups of a run (one per device) and their neighbour lists (one common capacity)."""

    def __init__(self, engine, run: MDRun):
        self.engine, self.run = engine, run
        self.groups = groups_of(len(run.systems), run.devices)
        self.mesh = Mesh(np.array(jax.devices()[:run.devices]), (AXIS,))
        self.shard = NamedSharding(self.mesh, PartitionSpec(AXIS))
        self.sizes = [[len(run.systems[r]) for r in g] for g in self.groups]
        self.lists = self.all_lists()

    def all_lists(self) -> list:
        while True:  # one common capacity: rebuild until no group grows it
            cap = self.engine.capacity
            out = [replica_lists(self.engine, self.run, g, self.run.log) for g in self.groups]
            if self.engine.capacity == cap:
                return out

    def batch(self):
        """The stacked ``Systems`` of every group at the current capacity."""
        e, run = self.engine, self.run
        return self.stack([pack_systems([run.systems[r] for r in g], e.capacity, e.dtype, [run.seeds[r] for r in g],
                                      [run.temps[r] for r in g], None if run.masks is None else
                                      [run.masks[r] for r in g]) for g in self.groups])

    def state(self, pieces):
        """The stacked ``MDState`` of every group from all replicas' pieces."""
        return self.stack([md_state([pieces[r] for r in g], self.engine.capacity) for g in self.groups])

    def stack(self, trees):
        return _stack(trees, self.shard)

    def pieces_of(self, state) -> list[dict]:
        """Every replica's piece, in replica order, from the stacked state."""
        host = jax.device_get(state)
        out = [None] * len(self.run.systems)
        for g, grp in enumerate(self.groups):
            for r, p in zip(grp, unpack_systems(jax.tree_util.tree_map(lambda x: x[g], host), self.sizes[g], MD_NODE)):
                out[r] = p
        return out

    def rebuild(self, state, stale):
        """Rebuild the stale groups' lists at their last good state (all groups if the capacity grows).
        Returns (state, stacked lists, the new stacked batch or None when it is unchanged)."""
        pieces = self.pieces_of(state)
        for p, a in zip(pieces, self.run.systems):
            a.positions, a.cell = p["positions"], p["cell"]
        cap, batch = self.engine.capacity, None
        for g in np.flatnonzero(stale):
            self.lists[g] = replica_lists(self.engine, self.run, self.groups[g], self.run.log)
        if self.engine.capacity != cap:  # grown: every group to the new capacity
            self.lists = self.all_lists()
            batch = self.batch()
        return self.state(pieces), self.stack(self.lists), batch


def run_md_sharded(engine, run: MDRun) -> dict:
    """``Engine.md``'s driver over ``run.devices`` devices (``engine``: a ``jaxmat.simulate.Engine``)."""
    s, devices = run.settings, run.devices
    grp = _Groups(engine, run)  # (checks the device count first)
    rebuilds_before = engine.n_rebuilds
    params = engine.device_params()
    state = grp.state(start_pieces(run.systems, engine.dtype))
    batch, stacked_lists = grp.batch(), grp.stack(grp.lists)
    stops = limits(run, engine.dtype)
    fn = _chunk_fn(engine, grp.mesh, run.dyn)
    zeros = np.zeros(devices, np.int32)
    with MDLog(run) as md_log:
        e0 = jax.device_put(np.zeros((devices, engine.capacity.n_graph)), grp.shard).astype(engine.dtype)
        state, _, _, e0 = fn(params, stacked_lists, state, batch, jax.device_put(zeros, grp.shard), jnp.asarray(True),
                             e0, stops)
        md_log.observe(grp.pieces_of(state), 0)
        step = 0
        while step < s.steps:
            target = step + min(run.chunk - step % run.chunk, s.steps - step)
            reached = np.full(devices, step, np.int32)
            just_rebuilt = np.zeros(devices, bool)
            while np.any(reached < target):
                n = jax.device_put((target - reached).astype(np.int32), grp.shard)
                state, done, status, e0 = fn(params, stacked_lists, state, batch, n, jnp.asarray(False), e0, stops)
                done, status = (np.asarray(x) for x in jax.device_get((done, status)))
                reached += done
                just_rebuilt &= done == 0
                if np.any(status == 2):  # a blow-up: the guard names the replica and step
                    md_log.observe(grp.pieces_of(state), int(np.max(reached)), write=False)
                    g = int(np.flatnonzero(status == 2)[0])
                    raise SimulationError(f"md: the device stopped replicas {grp.groups[g]} at step {int(reached[g])}: "
                                          "non-finite numbers, a runaway temperature or energy drift")
                if np.any(status == 1):
                    if np.any((status == 1) & (done == 0) & just_rebuilt):
                        raise ConfigError(thin_skin(engine.skin, s.timestep, int(np.min(reached))))
                    just_rebuilt = status == 1
                    engine.n_rebuilds += int(np.sum(status == 1))
                    state, stacked_lists, grown = grp.rebuild(state, status == 1)
                    batch = batch if grown is None else grown
            done_now = int(np.min(reached)) - step
            step += done_now
            md_log.advance(done_now)
            md_log.observe(grp.pieces_of(state), int(np.min(reached)), step % s.log_every == 0 or step == s.steps)
        return md_log.result(grp.pieces_of(state), engine.n_rebuilds - rebuilds_before)


def _chunk_fn(engine, mesh, dyn):
    """The engine's chunk on each device's group (cached on the engine per mesh and integrator)."""
    key = (tuple(d.id for d in mesh.devices.flat), dyn)
    if key not in engine.sharded_chunks:
        spec, rep = PartitionSpec(AXIS), PartitionSpec()

        def local(params, lists, state, batch, n, fresh, e0, limits):
            first = lambda t: jax.tree_util.tree_map(lambda x: x[0], t)  # noqa: E731
            st, i, status, e = engine.md_chunk(params, first(lists), first(state), first(batch), dyn, n[0], fresh,
                                               e0[0], limits)
            return jax.tree_util.tree_map(lambda x: x[None], (st, i, status, e))

        engine.sharded_chunks[key] = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(rep, spec, spec, spec, spec, rep,
                                                                                       spec, rep),
                                                           out_specs=spec, check_vma=False))
    return engine.sharded_chunks[key]
