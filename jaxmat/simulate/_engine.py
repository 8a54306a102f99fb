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
skinned lists and only grows (``jaxmat.simulate._neighbors.choose_capacity``).
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import NamedTuple

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
from ase import units
from ase.calculators.singlepoint import SinglePointCalculator
from tqdm.auto import tqdm

from jaxmat._checks import at_least, check_value, non_negative, one_of
from jaxmat.errors import ConfigError, RefusedStructure
from jaxmat.graph import DEFAULT_CHECKS
from jaxmat.guard import MDGuard, runaway_temperature
from jaxmat.md import MDSettings, format_log, thermalize
from jaxmat.models import DEFAULT_MODEL, load_model
from jaxmat.potential import energy_forces_stress
from jaxmat.relax import RelaxSettings, finish
from jaxmat.simulate import _fire as fire
from jaxmat.simulate._constraints import degrees_of_freedom as dof_of, masks_of
from jaxmat.simulate._integrators import (MDState, degrees_of_freedom, kinetic_energy, langevin, nose_hoover,
                                          npt_crescale, nve)
from jaxmat.simulate._layout import join, make_batch, split
from jaxmat.simulate._neighbors import build_lists, effective_graph, still_valid

MD_NODE = ("positions", "momenta", "forces")
FIRE_NODE = ("dof", "velocity", "forces", "positions", "cartesian_forces")
EYE = np.eye(3)


class Dynamics(NamedTuple):
    """Static description of an integrator (hashable: part of the compiled function's key)."""

    kind: str  # "nve", "langevin", "nose_hoover", "npt"
    timestep: float  # fs
    friction: float  # 1/fs
    tau: float  # fs, Nose-Hoover thermostat time
    tau_p: float  # fs, barostat time
    compressibility: float  # A^3/eV

    def integrator(self, batch, pressure=0.0):
        """The integrator; ``pressure`` (eV/A^3, NPT) may be a traced value (no recompilation)."""
        if self.kind == "nve":
            return nve(self.timestep, batch)
        if self.kind == "langevin":
            return langevin(self.timestep, self.friction, batch)
        if self.kind == "nose_hoover":
            return nose_hoover(self.timestep, self.tau, batch)
        return npt_crescale(self.timestep, self.friction, pressure, self.tau_p, self.compressibility, batch)


def dynamics_of(settings: MDSettings) -> Dynamics:
    return Dynamics(settings.ensemble, settings.timestep, settings.friction, settings.thermostat_time,
                    settings.barostat_time, settings.compressibility / units.GPa)


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

    Counters: ``n_compilations``, ``n_rebuilds``, ``n_grown`` (capacity growths).
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
        self._md = jax.jit(self._md_chunk, static_argnums=(4,))
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

    def _md_chunk(self, params, lists, state, batch, dyn: Dynamics, n_steps, fresh, e0, limits):
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
        state = fire.evaluate(state, potential, batch, relax_cell, pressure)
        state = state._replace(done=state.done | (state.fmax < fmax))

        def active(st):
            return jnp.any(~st.done & ~st.failed & (st.steps < max_steps) & (st.fmax >= fmax))

        def body(carry):
            i, st, _ = carry
            new = fire.step(st, potential, batch, relax_cell, pressure, fmax, max_steps)
            stale = ~self._valid(lists, jnp.where(new.failed[batch.graph_index][:, None], st.positions, new.positions),
                                 jnp.where(new.failed[:, None, None], st.cell, new.cell))
            st = jax.tree_util.tree_map(lambda a, b: jnp.where(stale, b, a), new, st)
            return i + 1, st, stale.astype(jnp.int32)

        i, state, status = jax.lax.while_loop(lambda c: (c[0] < n_steps) & (c[2] == 0) & active(c[1]), body,
                                              (jnp.int32(0), state, jnp.int32(0)))
        return state, status

    # ---------------------------------------------------------------- host side
    def _lists(self, systems, printer=None):
        old = self.capacity
        lists, self.capacity, real = build_lists(systems, self.cutoff, self.tbc, self.skin, self.dtype, old,
                                                 self.headroom, self.growth, self.grow, self.checks)
        if old is not None and self.capacity != old:
            self.n_grown += 1
            if printer:
                printer(f"neighbour lists need {tuple(real)} (atoms, bonds, triplets, structures): capacity grown "
                        f"from {tuple(old)} to {tuple(self.capacity)} (one compilation)")
        return lists

    def _device_params(self):
        if self._params is None:
            self._params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, self.dtype), self.model.params)
        return self._params

    def md(self, structures, settings: MDSettings = MDSettings(), temperatures=None, seeds=None,
           trajectory: str | None = "md.traj", printer=print, thermalize_momenta: bool = True,
           chunk_steps: int | None = None, progress: bool = False, devices: int = 1) -> dict:
        """Run MD of R structures at once (see ``jaxmat.md.MDSettings``; ``ensemble`` may also be
        "nose_hoover" or "npt" here).

        Args:
          structures: list of ``ase.Atoms`` (not modified), the replicas.
          temperatures: per-replica target temperatures (K); default ``settings.temperature``.
          seeds: per-replica seeds (initial velocities, noise); default ``settings.seed + r``.
          trajectory: ASE trajectory path; with R > 1 replica r goes to ``<stem>_r<r><suffix>``.
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
        systems = [a.copy() for a in structures]
        if thermalize_momenta:
            for a, t, seed in zip(systems, temps, seeds):
                thermalize(a, t, np.random.default_rng(seed))
        for a, m in zip(systems, masks or []):
            if m is not None:  # a fixed coordinate has no momentum (whatever the structure came with)
                a.set_momenta(a.get_momenta() * m, apply_constraint=False)
        guards = [MDGuard(len(a), t, s.timestep, s.ensemble == "nve", s.guard_limits) for a, t in zip(systems, temps)]
        for g, a in zip(guards, systems):
            g.masses = a.get_masses()
        dyn = dynamics_of(s)
        chunk = int(chunk_steps or s.log_every)
        with jax.enable_x64(self.dtype == "float64"):
            if devices != 1:
                from jaxmat.simulate._sharded import run_md_sharded

                return run_md_sharded(self, systems, temps, seeds, guards, dyn, s, chunk, trajectory, printer,
                                      progress, int(devices), masks)
            return self._run_md(systems, temps, seeds, guards, dyn, s, chunk, trajectory, printer, progress, masks)

    def _run_md(self, systems, temps, seeds, guards, dyn, s, chunk, trajectory, printer, progress, masks=None):
        R, sizes = len(systems), [len(a) for a in systems]
        rebuilds_before = self.n_rebuilds
        params = self._device_params()
        try:
            lists = self._lists(systems, printer)
        except RefusedStructure as err:
            raise type(err.cause)(f"replica {err.index} ({systems[err.index].get_chemical_formula()}): "
                                  f"{err.cause}") from err
        batch = make_batch(systems, self.capacity, self.dtype, seeds, temps, masks)
        pieces = [{"positions": a.positions, "momenta": a.get_momenta(), "forces": np.zeros((len(a), 3)),
                   "cell": a.cell.array, "energy": np.array(0.0), "stress": np.zeros((3, 3)),
                   "thermostat": np.array(0.0), "step": np.array(0, np.int32)} for a in systems]
        padding = {"cell": EYE, "energy": 0.0, "stress": np.zeros((3, 3)), "thermostat": 0.0}
        state = join(MDState, [_cast(p, self.dtype) for p in pieces], MD_NODE, self.capacity, padding)
        limits = (jnp.asarray(max(runaway_temperature(t, s.guard_limits) for t in temps), self.dtype),
                  jnp.asarray(s.max_energy_drift, self.dtype), jnp.asarray(s.pressure_ev_a3, self.dtype))
        writers = _writers(trajectory, R, systems)
        log = new_log(s)
        bar = tqdm(total=s.steps, unit="step", disable=not progress, leave=False)
        try:
            state, _, _, e0 = self._md(params, lists, state, batch, dyn, jnp.int32(0), jnp.asarray(True),
                                       jnp.zeros(self.capacity.n_graph, self.dtype), limits)
            self._observe(state, guards, sizes, 0)
            self._log(state, 0, s, log, writers, systems, sizes, printer, time.perf_counter(), 0)
            step, t_last, since, just_rebuilt = 0, time.perf_counter(), 0, False
            while step < s.steps:
                n = min(chunk - step % chunk, s.steps - step)
                state, done, status, e0 = self._md(params, lists, state, batch, dyn, jnp.int32(n), jnp.asarray(False),
                                                   e0, limits)
                done, status = int(done), int(status)
                step, since = step + done, since + done
                bar.update(done)
                if status == 1:  # stale lists: rebuild at the last good state and go on
                    if done == 0 and just_rebuilt:
                        raise ConfigError(thin_skin(self.skin, s.timestep, step))
                    self.n_rebuilds += 1
                    state, lists, batch = self._rebuild_md(state, systems, sizes, batch, padding, printer, masks)
                    just_rebuilt = True
                    continue
                just_rebuilt = False
                self._observe(state, guards, sizes, step)  # raises SimulationError on a blow-up
                if step % s.log_every == 0 or step == s.steps:
                    self._log(state, step, s, log, writers, systems, sizes, printer, t_last, since)
                    t_last, since = time.perf_counter(), 0
        finally:
            bar.close()
            for w in writers:
                w.close()
        return self._md_result(log, rebuilds_before, split(state, sizes, MD_NODE), systems)

    def _md_result(self, log, rebuilds_before, pieces, systems) -> dict:
        """``md``'s return value: the log's arrays, this run's rebuilds and each replica's last state."""
        out = {k: np.asarray(v) for k, v in log.items()}
        out["n_rebuilds"] = self.n_rebuilds - rebuilds_before
        out["final"] = [self._atoms_of(p, a) for p, a in zip(pieces, systems)]
        return out

    def _rebuild_md(self, state, systems, sizes, batch, padding, printer, masks=None):
        pieces = split(state, sizes, MD_NODE)
        for p, a in zip(pieces, systems):
            a.positions, a.cell = p["positions"], p["cell"]
        lists = self._lists(systems, printer)
        state = join(MDState, pieces, MD_NODE, self.capacity, padding)
        if batch.graph_index.shape[0] != self.capacity.n_node or batch.kT.shape[0] != self.capacity.n_graph:
            host = jax.device_get(batch)
            seeds, temps = host.seeds[: len(systems)], host.kT[: len(systems)] / units.kB
            batch = make_batch(systems, self.capacity, self.dtype, seeds, temps, masks)
        return state, lists, batch

    @staticmethod
    def _observe(state, guards, sizes, step):
        check_replicas(split(state, sizes, MD_NODE), guards, step)

    def _log(self, state, step, s, log, writers, systems, sizes, printer, t_last, n_done):
        self._log_pieces(split(state, sizes, MD_NODE), step, s, log, writers, systems, sizes, printer, t_last, n_done)

    def _log_pieces(self, pieces, step, s, log, writers, systems, sizes, printer, t_last, n_done):
        masses = [a.get_masses() for a in systems]
        epot = np.array([float(p["energy"]) for p in pieces])
        ekin = np.array([float(np.sum(p["momenta"] ** 2 / (2 * m[:, None]))) for p, m in zip(pieces, masses)])
        temp = np.array([2 * k / (max(dof_of(a), 1) * units.kB) for k, a in zip(ekin, systems)])
        values = dict(step=step, time_ps=step * s.timestep / 1000, epot=epot, ekin=ekin, temperature=temp,
                      etotal=epot + ekin)
        if "volume" in log:  # the cell moves (NPT): volume (A^3) and instantaneous pressure (GPa)
            values["volume"] = np.array([abs(np.linalg.det(p["cell"])) for p in pieces])
            values["pressure"] = np.array([(2 * k / (3 * v) - np.trace(p["stress"]) / 3) / units.GPa
                                           for k, v, p in zip(ekin, values["volume"], pieces)])
        for k in log:
            log[k].append(values[k])
        for w, p, a in zip(writers, pieces, systems):
            w.write(self._atoms_of(p, a))
        rate = (time.perf_counter() - t_last) / max(n_done, 1)
        printer(format_log(step, values["time_ps"], epot, ekin, temp, sizes, values.get("volume"),
                           values.get("pressure"), seconds_per_step=rate if n_done else None))

    @staticmethod
    def _atoms_of(piece, template):
        a = template.copy()
        a.positions, a.cell = piece["positions"], piece["cell"]
        if "momenta" in piece:
            a.set_momenta(piece["momenta"])
        a.calc = SinglePointCalculator(a, energy=float(piece["energy"]), forces=np.asarray(piece["forces"], float))
        return a

    # ---------------------------------------------------------------- relaxation
    def relax(self, structures, settings: RelaxSettings = RelaxSettings(), names=None, batch_size: int = 32,
              chunk_steps: int = 25, printer=None) -> list:
        """Relax structures with batched FIRE (positions and, unless ``fix_cell``, cells).

        ``batch_size`` structures run at once; one that converges, fails or uses up ``settings.steps``
        leaves the batch and the next waiting one takes its place. Returns one
        ``jaxmat.relax.Relaxed`` per structure, in order; a structure that diverged or that the
        checks refuse has ``error`` set and no ``atoms``. The relaxed structures carry the true
        (unconstrained) forces.

        ``FixAtoms`` and ``FixScaled`` (selective dynamics) are honoured: a fixed atom does not move
        (with a relaxing cell it keeps its fractional coordinates, as under ASE's
        ``FrechetCellFilter``); any other constraint is refused (``ConfigError``) before any work.
        """
        if not isinstance(settings, RelaxSettings):
            raise TypeError(f"Engine.relax: settings must be a jaxmat.relax.RelaxSettings, got {type(settings).__name__}")
        check_value("Engine.relax", "batch_size", batch_size, "int", at_least(1))
        check_value("Engine.relax", "chunk_steps", chunk_steps, "int", at_least(1))
        names = names or [f"#{k}" for k in range(len(structures))]
        for a in structures:
            self.model.check_species(a.numbers)
        masks = masks_of(structures, names)
        with jax.enable_x64(self.dtype == "float64"):
            return self._run_relax(list(structures), settings, names, int(batch_size), int(chunk_steps), printer,
                                   masks)

    def _run_relax(self, structures, s, names, batch_size, chunk, printer, masks=None):
        params = self._device_params()
        pressure = jnp.asarray(s.pressure_ev_a3, self.dtype)
        fmax, max_steps = jnp.asarray(s.fmax, self.dtype), jnp.int32(s.steps)
        results = [None] * len(structures)
        waiting, slots = deque(range(len(structures))), []  # slots: (index, piece or None)
        padding = {"log_deform": np.zeros((3, 3)), "cell_velocity": np.zeros((3, 3)), "cell_forces": np.zeros((3, 3)),
                   "ref_cell": EYE, "cell": EYE, "energy": 0.0, "stress": np.zeros((3, 3)), "fmax": 0.0,
                   "dt": 0.1, "alpha": 0.1, "n_pos": 0, "started": False, "done": True, "failed": False, "steps": 0}
        while waiting or slots:
            while waiting and len(slots) < batch_size:
                slots.append((waiting.popleft(), None))
            systems = []
            for k, piece in slots:
                a = structures[k].copy()
                if piece is not None:
                    a.positions, a.cell = piece["positions"], piece["cell"]
                systems.append(a)
            try:
                lists = self._lists(systems, printer)
            except RefusedStructure as err:  # drop only that structure
                k = slots[err.index][0]
                results[k] = finish(names[k], structures[k], None, None, None, 0, False, None, float("nan"),
                                    f"refused: {err.cause}")
                slots.pop(err.index)
                continue
            batch = make_batch(systems, self.capacity, self.dtype,
                               masks=None if masks is None else [masks[k] for k, _ in slots])
            pieces = [_cast(p if p is not None else _fresh_fire(a), self.dtype) for (k, p), a in zip(slots, systems)]
            state = join(fire.FireState, pieces, FIRE_NODE, self.capacity, padding)
            relax_cell = not s.fix_cell
            state, status = self._relax(params, lists, state, batch, relax_cell, jnp.int32(chunk), max_steps,
                                        pressure, fmax)
            if int(status):
                self.n_rebuilds += 1
            sizes = [len(a) for a in systems]
            kept = []
            for (k, _), piece, a in zip(slots, split(state, sizes, FIRE_NODE), systems):
                converged = bool(piece["done"] or piece["fmax"] < s.fmax)
                if bool(piece["failed"]) or not np.isfinite(piece["energy"]):
                    results[k] = finish(names[k], structures[k], None, None, None, int(piece["steps"]), False, None,
                                        float("nan"), f"diverged at step {int(piece['steps'])}: the energy turned "
                                        "non-finite or the volume left [1/8, 8] x its start")
                elif converged or int(piece["steps"]) >= s.steps:
                    final = structures[k].copy()
                    final.positions, final.cell = piece["positions"], piece["cell"]
                    v0 = abs(np.linalg.det(structures[k].cell.array)) if all(final.pbc) else float("nan")
                    stress = _voigt(piece["stress"]) if all(final.pbc) else None
                    results[k] = finish(names[k], final, float(piece["energy"]), piece["cartesian_forces"], stress,
                                        int(piece["steps"]), converged, float(piece["fmax"]), v0)
                else:
                    kept.append((k, piece))
            slots = kept
            if printer:
                printer(f"relaxed {sum(r is not None for r in results)}/{len(results)}")
        return results


def check_replicas(pieces, guards, step: int) -> None:
    """Each replica's ``MDGuard`` on its piece (raises SimulationError naming the replica of a batch)."""
    for r, (g, p) in enumerate(zip(guards, pieces)):
        ekin = float(np.sum(np.asarray(p["momenta"], np.float64) ** 2 / (2 * g.masses[:, None])))
        try:
            g.check(step, np.asarray(p["positions"], np.float64), float(p["energy"]), ekin)
        except Exception as err:
            if len(guards) == 1:
                raise
            raise type(err)(f"replica {r}: {err}") from err


def thin_skin(skin: float, timestep: float, step: int) -> str:
    """The error of a list that goes stale in the very step after its rebuild (else: a livelock)."""
    return (f"md at step {step}: the neighbour lists went stale again in the first step after a rebuild: one "
            f"{timestep} fs step moves an atom more than half the skin ({skin} A). Use a thicker skin "
            "(Engine(skin=...), jaxmat md --skin) or a shorter timestep")


def _fresh_fire(atoms) -> dict:
    n = len(atoms)
    z, z3 = np.zeros((n, 3)), np.zeros((3, 3))
    return {"dof": atoms.positions.copy(), "velocity": z, "forces": z, "positions": atoms.positions.copy(),
            "cartesian_forces": z, "log_deform": z3, "cell_velocity": z3, "cell_forces": z3,
            "ref_cell": atoms.cell.array.copy(), "cell": atoms.cell.array.copy(), "energy": np.array(0.0),
            "stress": z3, "fmax": np.array(np.inf), "dt": np.array(0.1), "alpha": np.array(0.1),
            "n_pos": np.array(0, np.int32), "started": np.array(False), "done": np.array(False),
            "failed": np.array(False), "steps": np.array(0, np.int32)}


def _cast(piece: dict, dtype) -> dict:
    return {k: (np.asarray(v, dtype) if np.asarray(v).dtype.kind == "f" else np.asarray(v)) for k, v in piece.items()}


def _voigt(stress):
    from jaxmat.potential import to_voigt

    return np.asarray(to_voigt(np.asarray(stress, np.float64)))


def new_log(settings: MDSettings) -> dict:
    """The empty log of an MD run: one list per column (volume and pressure when the cell moves)."""
    keys = ("step", "time_ps", "epot", "ekin", "temperature", "etotal")
    return {k: [] for k in keys + (("volume", "pressure") if settings.ensemble == "npt" else ())}


def trajectory_paths(trajectory: str | None, replicas: int) -> list[str]:
    """The files ``Engine.md`` writes: ``trajectory`` for one replica, ``<stem>_r<r><suffix>`` for each
    of several; none without a trajectory."""
    if not trajectory:
        return []
    if replicas == 1:
        return [str(trajectory)]
    p = Path(trajectory)
    return [str(p.with_name(f"{p.stem}_r{r}{p.suffix}")) for r in range(replicas)]


def _writers(trajectory, R, systems):
    return [ase.io.Trajectory(path, "w") for path in trajectory_paths(trajectory, R)]
