"""The on-device engine: jitted chunks of MD or FIRE steps over a padded batch, driven from the host.

One ``Engine`` holds a model, a precision and a neighbour-list policy. ``Engine.md`` advances R
replicas (copies with their own seeds or temperatures, or different structures) and
``Engine.relax`` relaxes many structures in batches where converged ones leave and waiting ones take
their place. Each chunk is one jitted ``lax.while_loop`` call of up to ``n`` steps that stops early,
on the device, when

* a neighbour list went stale (``still_valid``): the step is discarded, the host rebuilds the lists
  from the last good state and the chunk goes on (``n_rebuilds`` counts these);
* a replica blew up (non-finite numbers, the runaway temperature, NVE drift): the host's
  ``MDGuard`` then raises ``SimulationError`` naming the replica and the step.

The chunk function compiles once per capacity (``n_compilations``); the capacity comes from the
skinned lists and only grows (``jaxmat.graph.grow_sizes``). The host side of an MD
run (setup, guards, log, trajectories) is ``jaxmat.simulate._host``; with ``devices > 1`` the
replicas run through ``jaxmat.simulate._sharded``.
"""

from __future__ import annotations

import warnings
from collections import deque

import jax
import jax.numpy as jnp
import numpy as np
from ase import units

from jaxmat._checks import at_least, check_value, non_negative, one_of
from jaxmat.errors import ConfigError, RefusedStructure
from jaxmat.graph import DEFAULT_CHECKS
from jaxmat.guard import MDGuard
from jaxmat.md import MDSettings, thermalize
from jaxmat.models import DEFAULT_MODEL, load_model
from jaxmat.potential import energy_forces_stress
from jaxmat.relax import RelaxSettings, check_pressure_applies, relax_record
from jaxmat.simulate._constraints import masks_of
from jaxmat.simulate._fire import FIRE_NODE, PADDING, FireState, fire, start
from jaxmat.simulate._host import (MD_NODE, MDLog, MDRun, cast, dynamics_of, limits, md_state, replica_lists,
                                   start_pieces, thin_skin, voigt)
from jaxmat.simulate._integrators import Dynamics, degrees_of_freedom, kinetic_energy
from jaxmat.simulate._layout import join, pack_systems, unpack_systems
from jaxmat.simulate._neighbors import build_lists, effective_graph, still_valid
from jaxmat.simulate._sharded import run_md_sharded


class Engine:
    """Jitted, batched MD and relaxation with a jaxmat potential.

    Args:
      model: pretrained name, bundle folder or ``jaxmat.Model`` (an ensemble runs its mean).
      dtype: "float32" or "float64" (inside ``jax.enable_x64``, scoped to the engine's calls).
      skin: Verlet skin (A) of the candidate lists (bonds within cutoff + skin, triplets within
        three-body cutoff + skin).
      capacity: initial padded sizes (``jaxmat.graph.PadSizes``); None: from the first build.
      grow: let the capacity grow when a rebuild needs more (one compilation); False raises
        ``NeighborOverflowError``.
      checks: structure checks applied at every rebuild (``StructureError`` names the structure).

    Counters: ``n_compilations``, ``n_rebuilds``, ``n_grown`` (capacity growths). ``md_chunk``,
    ``neighbor_lists`` and ``device_params`` are what the MD drivers (one device here, several in
    ``jaxmat.simulate._sharded``) share.
    """

    def __init__(self, model=DEFAULT_MODEL, dtype: str = "float32", skin: float = 0.3, capacity=None,
                 grow: bool = True, headroom: float = 0.1, growth: float = 1.3, checks=DEFAULT_CHECKS):
        check_value("Engine", "dtype", dtype, "str", one_of("float32", "float64"))
        check_value("Engine", "skin", skin, "float", non_negative())
        self.model = load_model(model)
        if self.model.output_kind != "atoms":
            raise ConfigError(f"Engine.model = {self.model.name!r} is not a potential (it predicts one property per "
                              "structure)")
        self.dtype, self.skin, self.capacity, self.grow = dtype, float(skin), capacity, grow
        self.headroom, self.growth, self.checks = headroom, growth, checks
        self.cutoff, self.tbc = self.model.cutoff, self.model.three_body_cutoff
        self.n_compilations = self.n_rebuilds = self.n_grown = 0
        self.sharded_chunks = {}  # the sharded driver's compiled chunks, by mesh and integrator
        self._md = jax.jit(self.md_chunk, static_argnums=(4,))
        self._relax = jax.jit(self._relax_chunk, static_argnums=(4,))
        self._params = None

    # ---------------------------------------------------------------- device side
    def _potential(self, params, lists, compute_stress: bool):
        def potential(positions, cell):
            g = effective_graph(lists, positions, cell, self.cutoff, self.tbc)
            return energy_forces_stress(self.model.apply, params, g, compute_stress)

        return potential

    def _valid(self, lists, positions, cell):
        return jnp.all(still_valid(lists, positions, cell, self.cutoff, self.tbc, self.skin))

    def md_chunk(self, params, lists, state, batch, dyn: Dynamics, n_steps, fresh, e0, limits):
        """Up to ``n_steps`` MD steps of ``state`` (pure; jitted by the drivers). ``fresh``: evaluate the
        starting forces first (and the NVE reference energy ``e0`` (G,)); ``limits``: see
        ``jaxmat.simulate._host.limits``. Returns (state, steps done, status, e0) with status 0 (the
        steps ran), 1 (a list went stale: the state is the last good one) or 2 (a blow-up)."""
        self.n_compilations += 1  # runs only while tracing
        max_t, max_drift, pressure = limits
        integ = dyn.integrator(batch, pressure)
        potential = self._potential(params, lists, dyn.kind == "npt")
        state = jax.lax.cond(fresh, lambda s: integ.init(s, potential), lambda s: s, state)
        etot = lambda s: s.energy + kinetic_energy(s.momenta, batch)  # noqa: E731
        e0 = jnp.where(fresh, etot(state), e0)
        real, n = batch.graph_mask, jnp.maximum(batch.n_atoms, 1.0)
        dof = 3.0 * n if batch.free is None else jnp.maximum(degrees_of_freedom(batch), 1.0)

        def body(carry):
            i, st, _ = carry
            new = integ.step(st, potential)
            kin = kinetic_energy(new.momenta, batch)
            temp = 2.0 * kin / (dof * units.kB)
            finite = jnp.all(jnp.isfinite(new.energy) | ~real) & jnp.all(jnp.isfinite(new.positions))
            hot = jnp.any((temp > max_t) & real)
            drift = (dyn.kind == "nve") & jnp.any((jnp.abs(new.energy + kin - e0) / n > max_drift) & real)
            status = jnp.where(~finite, 2, jnp.where(~self._valid(lists, new.positions, new.cell), 1,
                                                      jnp.where(hot | drift, 2, 0))).astype(jnp.int32)
            stale = status == 1
            st = jax.tree_util.tree_map(lambda a, b: jnp.where(stale, b, a), new, st)
            return i + (~stale).astype(jnp.int32), st, status

        i, state, status = jax.lax.while_loop(lambda c: (c[0] < n_steps) & (c[2] == 0), body,
                                              (jnp.int32(0), state, jnp.int32(0)))
        return state, i, status, e0

    def _relax_chunk(self, params, lists, state, batch, relax_cell: bool, n_steps, max_steps, pressure, fmax):
        self.n_compilations += 1
        potential = self._potential(params, lists, True)
        opt = fire(batch, relax_cell, pressure, fmax, max_steps)
        state = opt.init(state, potential)

        def active(st):
            return jnp.any(~st.done & ~st.failed & (st.steps < max_steps) & (st.fmax >= fmax))

        def body(carry):
            i, st, _ = carry
            new = opt.step(st, potential)
            stale = ~self._valid(lists, jnp.where(new.failed[batch.graph_index][:, None], st.positions, new.positions),
                                 jnp.where(new.failed[:, None, None], st.cell, new.cell))
            st = jax.tree_util.tree_map(lambda a, b: jnp.where(stale, b, a), new, st)
            return i + 1, st, stale.astype(jnp.int32)

        i, state, status = jax.lax.while_loop(lambda c: (c[0] < n_steps) & (c[2] == 0) & active(c[1]), body,
                                              (jnp.int32(0), state, jnp.int32(0)))
        return state, status

    # ---------------------------------------------------------------- host side
    def neighbor_lists(self, systems, log=None):
        """The candidate lists of ``systems`` (``ase.Atoms``) at the engine's capacity, grown when they
        need more (``n_grown``; ``log`` says so). A structure the checks refuse raises
        ``RefusedStructure`` with its index."""
        old = self.capacity
        lists, self.capacity, real = build_lists(systems, self.cutoff, self.tbc, self.skin, self.dtype, old,
                                                 self.headroom, self.growth, self.grow, self.checks)
        if old is not None and self.capacity != old:
            self.n_grown += 1
            if log:
                log(f"neighbour lists need {tuple(real)} (atoms, bonds, triplets, structures): capacity grown "
                        f"from {tuple(old)} to {tuple(self.capacity)} (one compilation)")
        return lists

    def device_params(self):
        """The model's parameters on the device in the engine's dtype (made once)."""
        if self._params is None:
            self._params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, self.dtype), self.model.params)
        return self._params

    def md(self, structures, settings: MDSettings = MDSettings(), temperatures=None, seeds=None,
           trajectory: str | None = "md.traj", log=print, thermalize_momenta: bool = True,
           chunk_steps: int | None = None, progress: bool = False, devices: int = 1) -> dict:
        """Run MD of R structures at once (see ``jaxmat.md.MDSettings``; ``ensemble`` may also be
        "nose_hoover" or "npt" here).

        Args:
          structures: list of ``ase.Atoms`` (not modified), the replicas.
          temperatures: per-replica target temperatures (K); default ``settings.temperature``.
          seeds: per-replica seeds (initial velocities, noise); default ``settings.seed + r``.
          trajectory: ASE trajectory path; with R > 1 replica r goes to ``<stem>_r<r><suffix>``.
          log: called with each printed line (the MD log lines, capacity growth); ``print`` by default.
          thermalize_momenta: draw Maxwell-Boltzmann momenta (with ``numpy.random.default_rng(seed)``
            as ``jaxmat md --engine ase``); False keeps the structures' momenta.
          chunk_steps: steps per jitted call (default ``settings.log_every``).
          progress: a tqdm progress bar on stderr, advanced between chunks.
          devices: split the replicas over this many devices (``jax.shard_map``; at least one
            replica each); the results are those of one device (``jaxmat.simulate._sharded``).

        Returns a dict of arrays per log line: step, time_ps, and per replica (lines, R) epot,
        ekin, temperature, etotal (eV for the whole structure, K), with NPT also volume (A^3) and
        pressure (GPa, instantaneous, kinetic term included); ``n_rebuilds`` (this run's) and ``final``
        (the last state of each replica as ``ase.Atoms`` with energy and forces).

        Structures may carry ASE's ``FixAtoms`` or ``FixScaled`` (selective dynamics): the fixed
        coordinates get no force, noise or momentum and never move (``jaxmat.simulate._constraints``);
        any other constraint is refused (``ConfigError`` naming its class) before any work.
        """
        if not isinstance(settings, MDSettings):
            raise TypeError(f"Engine.md: settings must be a jaxmat.md.MDSettings, got {type(settings).__name__}")
        if settings.max_force_std is not None:
            raise ConfigError("md.max_force_std (ensemble uncertainty watch) is available with the ASE engine only")
        s, R = settings, len(structures)
        if R == 0:
            raise ConfigError("Engine.md: no structures given")
        temps = [s.temperature] * R if temperatures is None else [float(t) for t in temperatures]
        seeds = [s.seed + r for r in range(R)] if seeds is None else [int(x) for x in seeds]
        if len(temps) != R or len(seeds) != R:
            raise ConfigError(f"Engine.md: {R} structures but {len(temps)} temperatures and {len(seeds)} seeds")
        for a in structures:
            self.model.check_species(a.numbers)
        if s.ensemble == "npt" and not all(all(a.pbc) for a in structures):
            raise ConfigError("md.ensemble = 'npt' needs structures periodic in all three directions")
        masks = masks_of(structures, [f"replica {r}" for r in range(R)])  # refuses what it cannot honour
        if chunk_steps is not None:
            check_value("Engine.md", "chunk_steps", chunk_steps, "int", at_least(1))
        systems = _starting_systems(structures, temps, seeds, masks, thermalize_momenta)
        guards = [MDGuard(len(a), t, s.timestep, s.ensemble == "nve", s.guard_limits) for a, t in zip(systems, temps)]
        for g, a in zip(guards, systems):
            g.masses = a.get_masses()
        run = MDRun(systems, temps, seeds, guards, dynamics_of(s), s, int(chunk_steps or s.log_every), trajectory,
                    log, progress, masks, int(devices))
        with jax.enable_x64(self.dtype == "float64"):
            return self._run_md(run) if devices == 1 else run_md_sharded(self, run)

    def _run_md(self, run: MDRun) -> dict:
        """The one-device driver: chunks until ``settings.steps``, rebuilding stale lists in between."""
        s, sizes = run.settings, [len(a) for a in run.systems]
        rebuilds_before = self.n_rebuilds
        params = self.device_params()
        lists = replica_lists(self, run, list(range(len(sizes))), run.log)
        batch = pack_systems(run.systems, self.capacity, self.dtype, run.seeds, run.temps, run.masks)
        state = md_state(start_pieces(run.systems, self.dtype), self.capacity)
        stops = limits(run, self.dtype)
        with MDLog(run) as md_log:
            state, _, _, e0 = self._md(params, lists, state, batch, run.dyn, jnp.int32(0), jnp.asarray(True),
                                       jnp.zeros(self.capacity.n_graph, self.dtype), stops)
            md_log.observe(unpack_systems(state, sizes, MD_NODE), 0)
            step, just_rebuilt = 0, False
            while step < s.steps:
                n = min(run.chunk - step % run.chunk, s.steps - step)
                state, done, status, e0 = self._md(params, lists, state, batch, run.dyn, jnp.int32(n),
                                                   jnp.asarray(False), e0, stops)
                done, status = int(done), int(status)
                step += done
                md_log.advance(done)
                if status == 1:  # stale lists: rebuild at the last good state and go on
                    if done == 0 and just_rebuilt:
                        raise ConfigError(thin_skin(self.skin, s.timestep, step))
                    self.n_rebuilds += 1
                    state, lists, batch = self._rebuild_md(state, run, batch)
                    just_rebuilt = True
                    continue
                just_rebuilt = False
                md_log.observe(unpack_systems(state, sizes, MD_NODE), step, step % s.log_every == 0 or step == s.steps)
            return md_log.result(unpack_systems(state, sizes, MD_NODE), self.n_rebuilds - rebuilds_before)

    def _rebuild_md(self, state, run: MDRun, batch):
        pieces = unpack_systems(state, [len(a) for a in run.systems], MD_NODE)
        for p, a in zip(pieces, run.systems):
            a.positions, a.cell = p["positions"], p["cell"]
        lists = self.neighbor_lists(run.systems, run.log)
        state = md_state(pieces, self.capacity)
        if batch.graph_index.shape[0] != self.capacity.n_node or batch.kT.shape[0] != self.capacity.n_graph:
            host = jax.device_get(batch)
            seeds, temps = host.seeds[: len(run.systems)], host.kT[: len(run.systems)] / units.kB
            batch = pack_systems(run.systems, self.capacity, self.dtype, seeds, temps, run.masks)
        return state, lists, batch

    # ---------------------------------------------------------------- relaxation
    def relax(self, structures, settings: RelaxSettings = RelaxSettings(), names=None, graphs_per_batch: int | None = None,
              chunk_steps: int = 25, log=None, *, batch_size: int | None = None) -> list:
        """Relax structures with batched FIRE (positions and, unless ``fix_cell``, cells).

        ``graphs_per_batch`` structures (default 32; ``batch_size``: its old name, deprecated) run at
        once; one that converges, fails or uses up ``settings.steps`` leaves the batch and the next
        waiting one takes its place. ``log``: called with progress lines (None: silent). Returns one
        ``jaxmat.relax.Relaxed`` per structure, in order; a structure that diverged or that the
        checks refuse has ``error`` set and no ``atoms``. The relaxed structures carry the true
        (unconstrained) forces.

        ``FixAtoms`` and ``FixScaled`` (selective dynamics) are honoured: a fixed atom does not move
        (with a relaxing cell it keeps its fractional coordinates, as under ASE's
        ``FrechetCellFilter``); any other constraint is refused (``ConfigError``) before any work.
        """
        if not isinstance(settings, RelaxSettings):
            raise TypeError(f"Engine.relax: settings must be a jaxmat.relax.RelaxSettings, got {type(settings).__name__}")
        if batch_size is not None:
            if graphs_per_batch is not None:
                raise TypeError("Engine.relax: give graphs_per_batch or its old name batch_size, not both")
            warnings.warn("Engine.relax(batch_size=...) is deprecated: the argument is now graphs_per_batch (the name "
                          "Model.predict and training configs use)", DeprecationWarning, stacklevel=2)
            graphs_per_batch = batch_size
        graphs_per_batch = 32 if graphs_per_batch is None else graphs_per_batch
        check_value("Engine.relax", "graphs_per_batch", graphs_per_batch, "int", at_least(1))
        check_value("Engine.relax", "chunk_steps", chunk_steps, "int", at_least(1))
        names = names or [f"#{k}" for k in range(len(structures))]
        for a in structures:
            self.model.check_species(a.numbers)
        check_pressure_applies(structures, settings, names)
        masks = masks_of(structures, names)
        with jax.enable_x64(self.dtype == "float64"):
            return self._run_relax(list(structures), settings, names, int(graphs_per_batch), int(chunk_steps), log,
                                   masks)

    def _run_relax(self, structures, s: RelaxSettings, names, graphs_per_batch: int, chunk: int, log, masks=None):
        """Batches of ``graphs_per_batch`` structures, ``chunk`` FIRE steps per call; a structure leaves its slot
        when it is done and the next waiting one takes it."""
        params = self.device_params()
        pressure = jnp.asarray(s.pressure_ev_a3, self.dtype)
        fmax, max_steps = jnp.asarray(s.fmax, self.dtype), jnp.int32(s.steps)
        results = [None] * len(structures)
        waiting, slots = deque(range(len(structures))), []  # slots: (index, piece or None)
        while waiting or slots:
            while waiting and len(slots) < graphs_per_batch:
                slots.append((waiting.popleft(), None))
            systems = []
            for k, piece in slots:
                a = structures[k].copy()
                if piece is not None:
                    a.positions, a.cell = piece["positions"], piece["cell"]
                systems.append(a)
            try:
                lists = self.neighbor_lists(systems, log)
            except RefusedStructure as err:  # drop only that structure
                k = slots[err.index][0]
                results[k] = relax_record(names[k], structures[k], None, None, None, 0, False, None, float("nan"),
                                    f"refused: {err.cause}")
                slots.pop(err.index)
                continue
            batch = pack_systems(systems, self.capacity, self.dtype,
                               masks=None if masks is None else [masks[k] for k, _ in slots])
            pieces = [cast(p if p is not None else start(a), self.dtype) for (k, p), a in zip(slots, systems)]
            state = join(FireState, pieces, FIRE_NODE, self.capacity, PADDING)
            state, status = self._relax(params, lists, state, batch, not s.fix_cell, jnp.int32(chunk), max_steps,
                                        pressure, fmax)
            if int(status):
                self.n_rebuilds += 1
            kept = []
            for (k, _), piece in zip(slots, unpack_systems(state, [len(a) for a in systems], FIRE_NODE)):
                results[k] = _outcome(names[k], structures[k], piece, s)
                if results[k] is None:
                    kept.append((k, piece))
            slots = kept
            if log:
                log(f"relaxed {sum(r is not None for r in results)}/{len(results)}")
        return results


def _outcome(name: str, structure, piece: dict, s: RelaxSettings):
    """The ``Relaxed`` record of a structure that is done (converged, failed or out of steps) after a
    chunk, from its piece; None while it goes on."""
    steps = int(piece["steps"])
    converged = bool(piece["done"] or piece["fmax"] < s.fmax)
    if bool(piece["failed"]) or not np.isfinite(piece["energy"]):
        return relax_record(name, structure, None, None, None, steps, False, None, float("nan"),
                      f"diverged at step {steps}: the energy turned non-finite or the volume left [1/8, 8] x its "
                      "start")
    if not (converged or steps >= s.steps):
        return None
    final = structure.copy()
    final.positions, final.cell = piece["positions"], piece["cell"]
    v0 = abs(np.linalg.det(structure.cell.array)) if all(final.pbc) else float("nan")
    stress = voigt(piece["stress"]) if all(final.pbc) else None
    return relax_record(name, final, float(piece["energy"]), piece["cartesian_forces"], stress, steps, converged,
                  float(piece["fmax"]), v0)


def _starting_systems(structures, temps, seeds, masks, thermalize_momenta: bool) -> list:
    """Copies of the replicas with their starting momenta: Maxwell-Boltzmann at each temperature (with
    ``numpy.random.default_rng(seed)``, as ``jaxmat md --engine ase``) or their own; a fixed coordinate
    has no momentum (whatever the structure came with)."""
    systems = [a.copy() for a in structures]
    if thermalize_momenta:
        for a, t, seed in zip(systems, temps, seeds):
            thermalize(a, t, np.random.default_rng(seed))
    for a, m in zip(systems, masks or []):
        if m is not None:
            a.set_momenta(a.get_momenta() * m, apply_constraint=False)
    return systems
