"""Molecular dynamics with ASE integrators and a jaxmat calculator (the ``jaxmat md`` job)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import ClassVar

import ase.io
import numpy as np
from ase import units
from ase.build import bulk
from ase.md.langevin import Langevin
from ase.md import velocitydistribution
from ase.md.verlet import VelocityVerlet

from jaxmat._checks import ConfigError, Rule, at_least, check_instance, check_value, each, non_negative, one_of
from jaxmat.data import read_structures
from jaxmat.graph import StructureError
from jaxmat.guard import GuardLimits, MDGuard


def load_structure(spec: str, supercell=None, min_atoms: int = 64):
    """An ``ase.Atoms`` from a file readable by ``ase.io`` (its last frame) or a chemical name for
    ``ase.build.bulk`` (e.g. "Si", "Cu", "NaCl:rocksalt:5.64"). Named crystals use the cubic cell
    where one exists and are repeated to at least ``min_atoms`` atoms unless ``supercell`` is given.

    Raises ``DatasetError`` for a file ase cannot read and ``ValueError`` for a name ase does not
    know, a lattice constant that is not a positive number, or a bad ``supercell``.
    """
    if supercell is not None:
        check_value("md", "supercell", list(supercell), "list[int]", each(at_least(1)))
        if len(supercell) != 3:
            raise ConfigError(f"md.supercell = {list(supercell)}: expected three repetitions (a b c)")
    path = Path(spec)
    if path.exists():  # a file (or a directory, which read_structures names as such)
        atoms = read_structures(path, -1)[0]
    else:
        atoms = _named_crystal(spec)
    if supercell is None and all(atoms.pbc):
        reps = 1
        while len(atoms) * reps**3 < min_atoms:
            reps += 1
        supercell = (reps, reps, reps)
    if supercell is not None:
        if not all(atoms.pbc):
            raise ConfigError(f"md.supercell = {list(supercell)}: {spec} is not periodic in all three directions "
                              f"(pbc={atoms.pbc.tolist()}), so it cannot be repeated")
        atoms = atoms.repeat(tuple(supercell))
    return atoms


def _named_crystal(spec: str):
    """``NAME[:STRUCTURE[:A]]`` -> ``ase.build.bulk`` (cubic cell where one exists)."""
    name, *rest = spec.split(":")
    kwargs = {}
    if rest and rest[0]:
        kwargs["crystalstructure"] = rest[0]
    if len(rest) > 1:
        try:
            a = float(rest[1])
        except ValueError:
            a = float("nan")
        if not (np.isfinite(a) and a > 0):
            raise ValueError(f"{spec!r}: the lattice constant {rest[1]!r} must be a positive number of Angstrom")
        kwargs["a"] = a
    if len(rest) > 2:
        raise ValueError(f"{spec!r}: expected NAME[:STRUCTURE[:A]], e.g. NaCl:rocksalt:5.64")
    try:
        try:
            return bulk(name, cubic=True, **kwargs)
        except (ValueError, RuntimeError, AssertionError):
            return bulk(name, **kwargs)
    except (ValueError, KeyError, RuntimeError, AssertionError, TypeError) as err:
        raise ValueError(
            f"{spec!r} is neither a structure file nor a crystal ase.build.bulk knows "
            f"({type(err).__name__}: {err or 'invalid parameters'})"
        ) from None


def thermalize(atoms, temperature: float, rng) -> None:
    """Maxwell-Boltzmann momenta at ``temperature`` K with zero total momentum."""
    vd = velocitydistribution
    if hasattr(vd, "thermalize_momenta"):  # ASE >= 3.28
        vd.thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    else:  # pragma: no cover - older ASE
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    vd.Stationary(atoms)


@dataclasses.dataclass(frozen=True)
class MDSettings:
    """Settings of one MD run, checked when made (``ConfigError`` names the bad one)."""

    temperature: float = 300.0  #: K: initial velocities and the Langevin target
    timestep: float = 1.0  #: fs
    steps: int = 300  #: number of MD steps
    ensemble: str = "langevin"  #: "langevin" (NVT) or "nve" (velocity Verlet)
    friction: float = 0.01  #: Langevin friction, 1/fs
    log_every: int = 10  #: steps between log lines and trajectory frames
    seed: int = 0  #: seed of the initial velocities and the Langevin noise
    max_temperature: float | None = GuardLimits.max_temperature  #: K: runaway limit (None: max(5000 K, 10 x temperature))
    max_energy_drift: float = GuardLimits.max_energy_drift  #: eV/atom: NVE total-energy drift limit

    RULES: ClassVar[dict] = {
        "temperature": non_negative(), "steps": non_negative(), "log_every": at_least(1), "seed": non_negative(),
        "timestep": Rule(lambda v: 0 < v <= 10, "in (0, 10] fs (atomistic MD is unstable beyond a few fs)"),
        "ensemble": one_of("langevin", "nve"), "friction": Rule(lambda v: 0 < v <= 1, "in (0, 1] 1/fs"),
        **GuardLimits.RULES}

    def __post_init__(self):
        check_instance(self, "md")
        if self.max_temperature is not None and self.max_temperature <= self.temperature:
            raise ConfigError(f"md.max_temperature = {self.max_temperature}: the runaway limit must be above the "
                              f"temperature ({self.temperature} K)")

    @property
    def guard_limits(self) -> GuardLimits:
        return GuardLimits(self.max_temperature, self.max_energy_drift)


def run_md(atoms, calc, settings: MDSettings = MDSettings(), trajectory: str | None = "md.traj", printer=print):
    """Run MD; returns a dict of arrays (step, time_ps, epot, ekin, temperature, etotal) per log line.

    ``settings.ensemble`` is "langevin" (NVT) or "nve" (velocity Verlet). Velocities start from a
    Maxwell-Boltzmann distribution at ``settings.temperature`` with zero total momentum. Every step
    passes ``jaxmat.guard.MDGuard`` before anything is logged or written: a run that blows up raises
    ``SimulationError`` naming the step and the likely cause, and its trajectory ends with the last
    good logged frame. A structure the calculator refuses raises its own error before step 0.
    """
    if not isinstance(settings, MDSettings):
        raise TypeError(f"run_md: settings must be a jaxmat.md.MDSettings, got {type(settings).__name__}")
    s = settings
    guard = MDGuard(len(atoms), s.temperature, s.timestep, s.ensemble == "nve", s.guard_limits)
    atoms.calc = calc
    atoms.get_potential_energy()  # a structure the calculator refuses fails here, as itself (StructureError)
    rng = np.random.default_rng(s.seed)
    thermalize(atoms, s.temperature, rng)
    if s.ensemble == "langevin":
        dyn = Langevin(atoms, s.timestep * units.fs, temperature_K=s.temperature,
                       friction=s.friction / units.fs, rng=rng, fixcm=False)
    else:
        dyn = VelocityVerlet(atoms, s.timestep * units.fs)
    traj = ase.io.Trajectory(trajectory, "w", atoms) if trajectory else None
    log = {k: [] for k in ("step", "time_ps", "epot", "ekin", "temperature", "etotal")}
    t0 = [time.perf_counter()]

    def observe():  # every step: the guard first, then (on logged steps) the frame and the log line
        step = dyn.nsteps
        epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        guard.check(step, atoms.positions, epot, ekin)
        if step % s.log_every:
            return
        if traj is not None:
            traj.write(atoms)
        now = time.perf_counter()
        rate = (now - t0[0]) / s.log_every if step else float("nan")
        t0[0] = now
        temp = atoms.get_temperature()
        for k, v in zip(log, (step, step * s.timestep / 1000, epot, ekin, temp, epot + ekin)):
            log[k].append(v)
        printer(
            f"step {step:6d}  t {step * s.timestep / 1000:7.3f} ps  Epot {epot:12.4f} eV  "
            f"Ekin {ekin:9.4f} eV  T {temp:7.1f} K  Etot {epot + ekin:12.4f} eV  "
            f"{rate * 1000:7.1f} ms/step"
        )

    dyn.attach(observe, interval=1)
    try:
        dyn.run(s.steps)
    except StructureError as err:  # the calculator refused a state the blow-up produced
        raise guard.failure(dyn.nsteps + 1, err) from err
    finally:
        if traj is not None:
            traj.close()
    return {k: np.asarray(v) for k, v in log.items()}
