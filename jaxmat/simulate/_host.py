"""The host side of an ``Engine.md`` run, shared by the one-device and the sharded driver.

``MDRun`` is one checked run (replicas, their temperatures, seeds and guards, the integrator, the
settings and where the output goes); ``start_pieces``, ``md_state`` and ``limits`` set up the
device state; ``MDLog`` owns everything a run writes (the returned log, the trajectory files, the
progress bar, the printed lines) and checks each replica's ``MDGuard`` on the pieces a driver hands
it. Pieces are per-replica numpy dicts (``jaxmat.simulate._layout.unpack_systems``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, NamedTuple

import ase.io
import jax.numpy as jnp
import numpy as np
from ase import units
from ase.calculators.singlepoint import SinglePointCalculator
from tqdm.auto import tqdm

from jaxmat.errors import RefusedStructure
from jaxmat.guard import runaway_temperature
from jaxmat.md import MDSettings, format_log
from jaxmat.potential import to_voigt
from jaxmat.simulate._constraints import degrees_of_freedom
from jaxmat.simulate._integrators import Dynamics, MDState
from jaxmat.simulate._layout import join

EYE = np.eye(3)
#: the per-atom fields of ``MDState`` (the others are per structure, or the scalar step)
MD_NODE = ("positions", "momenta", "forces")
#: the per-structure values of a padding structure
MD_PADDING = {"cell": EYE, "energy": 0.0, "stress": np.zeros((3, 3)), "thermostat": 0.0}


class MDRun(NamedTuple):
    """One checked ``Engine.md`` run.

    systems: the replicas (``ase.Atoms`` copies with their starting momenta; the drivers move them
    to each rebuild's positions); temps (K) and seeds, one per replica; guards: one ``MDGuard`` per
    replica (with ``masses``); dyn: the integrator; settings; chunk: steps per jitted call;
    trajectory (path or None); log; progress (a tqdm bar); masks: per-replica free masks or None;
    devices: how many devices the replicas are split over.
    """

    systems: list
    temps: list
    seeds: list
    guards: list
    dyn: Dynamics
    settings: MDSettings
    chunk: int
    trajectory: str | None
    log: Callable
    progress: bool
    masks: list | None
    devices: int


def dynamics_of(settings: MDSettings) -> Dynamics:
    return Dynamics(settings.ensemble, settings.timestep, settings.friction, settings.thermostat_time,
                    settings.barostat_time, settings.compressibility / units.GPa)


def cast(piece: dict, dtype) -> dict:
    """A piece with its floating-point arrays in ``dtype``."""
    return {k: (np.asarray(v, dtype) if np.asarray(v).dtype.kind == "f" else np.asarray(v)) for k, v in piece.items()}


def voigt(stress) -> np.ndarray:
    """A (3, 3) stress (eV/A^3) as ASE's Voigt 6-vector, float64."""
    return np.asarray(to_voigt(np.asarray(stress, np.float64)))


def start_pieces(systems, dtype) -> list[dict]:
    """Each replica's starting piece in ``dtype`` (forces and energy are evaluated on the device)."""
    pieces = [{"positions": a.positions, "momenta": a.get_momenta(), "forces": np.zeros((len(a), 3)),
               "cell": a.cell.array, "energy": np.array(0.0), "stress": np.zeros((3, 3)),
               "thermostat": np.array(0.0), "step": np.array(0, np.int32)} for a in systems]
    return [cast(p, dtype) for p in pieces]


def md_state(pieces, capacity) -> MDState:
    """The padded ``MDState`` of some replicas' pieces."""
    return join(MDState, pieces, MD_NODE, capacity, MD_PADDING)


def limits(run: MDRun, dtype) -> tuple:
    """The device's stop limits: runaway temperature (K), NVE drift (eV/atom), NPT pressure (eV/A^3)."""
    s = run.settings
    return (jnp.asarray(max(runaway_temperature(t, s.guard_limits) for t in run.temps), dtype),
            jnp.asarray(s.max_energy_drift, dtype), jnp.asarray(s.pressure_ev_a3, dtype))


def replica_lists(engine, run: MDRun, replicas, log):
    """``engine.neighbor_lists`` of some replicas; a structure the checks refuse raises its own error
    naming the replica and its formula."""
    try:
        return engine.neighbor_lists([run.systems[r] for r in replicas], log)
    except RefusedStructure as err:
        r = replicas[err.index]
        raise type(err.cause)(f"replica {r} ({run.systems[r].get_chemical_formula()}): {err.cause}") from err


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


def trajectory_paths(trajectory: str | None, replicas: int) -> list[str]:
    """The files ``Engine.md`` writes: ``trajectory`` for one replica, ``<stem>_r<r><suffix>`` for each
    of several; none without a trajectory."""
    if not trajectory:
        return []
    if replicas == 1:
        return [str(trajectory)]
    p = Path(trajectory)
    return [str(p.with_name(f"{p.stem}_r{r}{p.suffix}")) for r in range(replicas)]


def atoms_of(piece: dict, template):
    """A copy of ``template`` at the piece's positions, cell and momenta, with its energy and forces."""
    a = template.copy()
    a.positions, a.cell = piece["positions"], piece["cell"]
    if "momenta" in piece:
        a.set_momenta(piece["momenta"])
    a.calc = SinglePointCalculator(a, energy=float(piece["energy"]), forces=np.asarray(piece["forces"], float))
    return a


class MDLog:
    """What an MD run writes: the log's columns, one trajectory per replica, a progress bar, the lines.

    A context manager (the bar and the files close on exit). ``advance(n)`` counts steps run;
    ``observe(pieces, step, write)`` checks every replica's guard and, when ``write``, appends a log
    line, writes a frame per replica and prints the line (with the wall time per step since the last).
    """

    def __init__(self, run: MDRun):
        self.run = run
        self.writers = [ase.io.Trajectory(path, "w") for path in trajectory_paths(run.trajectory, len(run.systems))]
        keys = ("step", "time_ps", "epot", "ekin", "temperature", "etotal")
        self.columns = {k: [] for k in keys + (("volume", "pressure") if run.settings.ensemble == "npt" else ())}
        self.bar = tqdm(total=run.settings.steps, unit="step", disable=not run.progress, leave=False)
        self.t_last, self.since = time.perf_counter(), 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()
        for w in self.writers:
            w.close()

    def advance(self, n: int) -> None:
        self.since += n
        self.bar.update(n)

    def observe(self, pieces, step: int, write: bool = True) -> None:
        check_replicas(pieces, self.run.guards, step)  # raises SimulationError on a blow-up
        if write:
            self._record(pieces, step)
            self.t_last, self.since = time.perf_counter(), 0

    def _record(self, pieces, step: int) -> None:
        s, systems = self.run.settings, self.run.systems
        masses = [a.get_masses() for a in systems]
        epot = np.array([float(p["energy"]) for p in pieces])
        ekin = np.array([float(np.sum(p["momenta"] ** 2 / (2 * m[:, None]))) for p, m in zip(pieces, masses)])
        temp = np.array([2 * k / (max(degrees_of_freedom(a), 1) * units.kB) for k, a in zip(ekin, systems)])
        values = dict(step=step, time_ps=step * s.timestep / 1000, epot=epot, ekin=ekin, temperature=temp,
                      etotal=epot + ekin)
        if "volume" in self.columns:  # the cell moves (NPT): volume (A^3) and instantaneous pressure (GPa)
            values["volume"] = np.array([abs(np.linalg.det(p["cell"])) for p in pieces])
            values["pressure"] = np.array([(2 * k / (3 * v) - np.trace(p["stress"]) / 3) / units.GPa
                                           for k, v, p in zip(ekin, values["volume"], pieces)])
        for k in self.columns:
            self.columns[k].append(values[k])
        for w, p, a in zip(self.writers, pieces, systems):
            w.write(atoms_of(p, a))
        rate = (time.perf_counter() - self.t_last) / max(self.since, 1)
        self.run.log(format_log(step, values["time_ps"], epot, ekin, temp, [len(a) for a in systems],
                                    values.get("volume"), values.get("pressure"),
                                    seconds_per_step=rate if self.since else None))

    def result(self, pieces, n_rebuilds: int) -> dict:
        """``Engine.md``'s return value: the log's arrays, the run's rebuilds and each replica's last
        state (``ase.Atoms`` with energy and forces)."""
        out = {k: np.asarray(v) for k, v in self.columns.items()}
        out["n_rebuilds"] = n_rebuilds
        out["final"] = [atoms_of(p, a) for p, a in zip(pieces, self.run.systems)]
        return out
