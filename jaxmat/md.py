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

from jaxmat._checks import Rule, at_least, check_instance, check_value, each, non_negative, one_of, positive
from jaxmat.data import read_structures
from jaxmat.errors import ConfigError, StructureError
from jaxmat.guard import GuardLimits, MDGuard
from jaxmat.models import warn_if_uncalibrated


def load_structure(spec: str, supercell=None, min_atoms: int = 64):
    """An ``ase.Atoms`` from a file readable by ``ase.io`` (its last frame) or a chemical name for
    ``ase.build.bulk`` (e.g. "Si", "Cu", "NaCl:rocksalt:5.64"). Named crystals use the cubic cell
    where one exists. Anything periodic in all three directions (a named crystal or a file) is
    repeated to at least ``min_atoms`` atoms unless ``supercell`` is given; ``supercell`` (1, 1, 1)
    keeps it as it is (constraints ASE cannot repeat, e.g. ``FixBondLengths``, included).

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
    if supercell is not None and tuple(supercell) != (1, 1, 1):
        if not all(atoms.pbc):
            raise ConfigError(f"md.supercell = {list(supercell)}: {spec} is not periodic in all three directions "
                              f"(pbc={atoms.pbc.tolist()}), so it cannot be repeated")
        try:
            atoms = atoms.repeat(tuple(supercell))
        except NotImplementedError:  # ASE repeats FixAtoms / FixScaled, not e.g. FixBondLengths
            names = sorted({type(c).__name__ for c in atoms.constraints})
            raise ConfigError(f"md.supercell = {list(supercell)}: {spec} carries constraint(s) {', '.join(names)} that "
                              "ASE cannot repeat into a supercell; pass --supercell 1 1 1 or remove them") from None
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
    """Maxwell-Boltzmann momenta at ``temperature`` K with zero total momentum (a single atom, which has
    no internal degrees of freedom, is left at rest)."""
    if len(atoms) < 2:
        atoms.set_momenta(np.zeros((len(atoms), 3)))
        return
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
    ensemble: str = "langevin"  #: "langevin" (NVT), "nve" (velocity Verlet); jax engine also "nose_hoover", "npt"
    friction: float = 0.01  #: Langevin friction, 1/fs
    log_every: int = 10  #: steps between log lines and trajectory frames
    seed: int = 0  #: seed of the initial velocities and the Langevin noise
    max_temperature: float | None = GuardLimits.max_temperature  #: K: runaway limit (None: max(5000 K, 10 x temperature))
    max_energy_drift: float = GuardLimits.max_energy_drift  #: eV/atom: NVE total-energy drift limit
    max_force_std: float | None = None  #: eV/A: with an ensemble or LLPR model, the largest per-atom calibrated force std (norm of the atom's std vector) allowed (None: only logged)
    on_uncertain: str = "stop"  #: when max_force_std is exceeded: "stop" (write the frame, end the run) or "collect" (write every such frame, go on)
    thermostat_time: float = 100.0  #: fs: Nose-Hoover thermostat time (jax engine)
    pressure: float | None = None  #: GPa: NPT target pressure (jax engine; None: 0 GPa); refused outside NPT
    barostat_time: float = 1000.0  #: fs: NPT cell-rescaling relaxation time (jax engine)
    compressibility: float = 0.01  #: 1/GPa: NPT isothermal compressibility (jax engine; ~1/bulk modulus)

    RULES: ClassVar[dict] = {
        "temperature": non_negative(), "steps": non_negative(), "log_every": at_least(1), "seed": non_negative(),
        "timestep": Rule(lambda v: 0 < v <= 10, "in (0, 10] fs (atomistic MD is unstable beyond a few fs)"),
        "ensemble": one_of("langevin", "nve", "nose_hoover", "npt"),
        "thermostat_time": positive(), "barostat_time": positive(), "compressibility": positive(),
        "pressure": Rule(lambda v: -1000 <= v <= 1000, "in [-1000, 1000] GPa"), "friction": Rule(lambda v: 0 < v <= 1, "in (0, 1] 1/fs"),
        "max_force_std": Rule(lambda v: v > 0, "> 0 eV/A"), "on_uncertain": one_of("stop", "collect"),
        **GuardLimits.RULES}

    def __post_init__(self):
        check_instance(self, "md")
        if self.max_temperature is not None and self.max_temperature <= self.temperature:
            raise ConfigError(f"md.max_temperature = {self.max_temperature}: the runaway limit must be above the "
                              f"temperature ({self.temperature} K)")
        if self.pressure is not None and self.ensemble != "npt":
            raise ConfigError(f"md.pressure = {self.pressure} GPa: a target pressure needs ensemble 'npt' (the cell "
                              f"of '{self.ensemble}' MD is fixed, so the pressure would be ignored); use --ensemble "
                              "npt --engine jax, or leave the pressure out")

    @property
    def pressure_ev_a3(self) -> float:
        """The NPT target pressure in eV/A^3 (0 when not given)."""
        return (self.pressure or 0.0) * units.GPa

    @property
    def guard_limits(self) -> GuardLimits:
        return GuardLimits(self.max_temperature, self.max_energy_drift)


def format_log(step: int, time_ps: float, epot, ekin, temperature, n_atoms, volume=None, pressure=None,
               max_force_std=None, seconds_per_step=None) -> str:
    """One MD log line, the same for every engine.

    ``epot``, ``ekin`` (eV, per structure), ``temperature`` (K), ``n_atoms``, ``volume`` (A^3) and
    ``pressure`` (GPa) are scalars or one value per replica; energies are printed per atom (eV/atom,
    as ASE's ``MDLogger``) and, with replicas, as their mean (with the temperature's range). Volume and
    pressure appear where the cell moves (NPT); ``max_force_std`` (eV/A) with an ensemble;
    ``seconds_per_step`` (wall time) once steps were run.
    """
    epot, ekin, temp, n = (np.atleast_1d(np.asarray(x, np.float64)) for x in (epot, ekin, temperature, n_atoms))
    line = (f"step {step:6d}  t {time_ps:7.3f} ps  Epot {np.mean(epot / n):10.5f} eV/atom  "
            f"Ekin {np.mean(ekin / n):8.5f} eV/atom  Etot {np.mean((epot + ekin) / n):10.5f} eV/atom  "
            f"T {np.mean(temp):7.1f} K" + (f" ({np.min(temp):.0f}-{np.max(temp):.0f})" if len(temp) > 1 else ""))
    if volume is not None:
        line += f"  V {np.mean(volume):9.2f} A^3  P {np.mean(pressure):8.3f} GPa"
    if max_force_std is not None:
        line += f"  max F std {max_force_std:6.3f} eV/A"
    if seconds_per_step:
        line += f"  {seconds_per_step * 1000:7.2f} ms/step  {np.sum(n) / seconds_per_step:9.0f} atom-steps/s"
    return line


class _Uncertain(Exception):
    """Internal: ends ``dyn.run`` when the ensemble's force spread passed ``max_force_std``."""


def _check_ase_md(settings, calc) -> None:
    """What ``run_md`` (the ASE engine) refuses: other settings types, the jax engine's ensembles and
    an uncertainty watch without an ensemble."""
    if not isinstance(settings, MDSettings):
        raise TypeError(f"run_md: settings must be a jaxmat.md.MDSettings, got {type(settings).__name__}")
    s = settings
    if s.ensemble not in ("langevin", "nve"):
        raise ConfigError(f"md.ensemble = {s.ensemble!r} runs on the jax engine only (jaxmat md --engine jax); the ASE "
                          "engine runs 'langevin' and 'nve'")
    if s.max_force_std is not None and "forces_std" not in getattr(calc, "implemented_properties", ()):
        raise ConfigError(f"md.max_force_std = {s.max_force_std} needs an ensemble model (one that reports forces_std); "
                          f"{getattr(getattr(calc, 'model', None), 'name', type(calc).__name__)} is a single model")


def _ase_dynamics(atoms, s: MDSettings, rng):
    """ASE's ``Langevin`` (sharing ``rng``, no centre-of-mass fixing) or ``VelocityVerlet``."""
    if s.ensemble == "langevin":
        return Langevin(atoms, s.timestep * units.fs, temperature_K=s.temperature, friction=s.friction / units.fs,
                        rng=rng, fixcm=False)
    return VelocityVerlet(atoms, s.timestep * units.fs)


def _append_frame(path, atoms, append: bool, **info) -> None:
    """Write a copy of ``atoms`` with ``info`` to ``path`` (extxyz), after the frames there if ``append``."""
    frame = atoms.copy()
    frame.info.update(info)
    ase.io.write(path, frame, format="extxyz", append=append)


def run_md(atoms, calc, settings: MDSettings = MDSettings(), trajectory: str | None = "md.traj", log=print,
           uncertain_file: str | None = None):
    """Run MD; returns a dict of arrays (step, time_ps, epot, ekin, temperature, etotal) per log line
    (energies in eV for the whole structure; the printed line, ``format_log``, gives them per atom).

    With an ensemble calculator (``calc.results`` holds ``forces_std``) the log also has
    ``max_force_std`` (eV/A, the largest per-atom norm of the calibrated force-std vectors of the
    logged step, sqrt(s_x^2 + s_y^2 + s_z^2); ``jaxmat.train._per_atom``) and
    every step is compared with ``settings.max_force_std``: a step above it is appended to
    ``uncertain_file`` (extxyz; default ``<trajectory stem>_uncertain.extxyz``, or
    ``uncertain.extxyz``) for relabelling, and the run ends there ("stop") or goes on ("collect").
    The returned dict then has ``uncertain_steps`` (the steps written) and ``stopped_at`` (the step
    the run ended at, or -1).

    ``settings.ensemble`` is "langevin" (NVT) or "nve" (velocity Verlet). Velocities start from a
    Maxwell-Boltzmann distribution at ``settings.temperature`` with zero total momentum. Every step
    passes ``jaxmat.guard.MDGuard`` before anything is logged or written: a run that blows up raises
    ``SimulationError`` naming the step and the likely cause, and its trajectory ends with the last
    good logged frame. A structure the calculator refuses raises its own error before step 0.
    """
    _check_ase_md(settings, calc)
    s = settings
    if s.max_force_std is not None:  # the watch compares raw spreads where the bundle has no force calibration
        warn_if_uncalibrated(getattr(calc, "model", None), "forces", f"md.max_force_std = {s.max_force_std} eV/A")
    if uncertain_file is None:
        uncertain_file = str(Path(trajectory).with_suffix("")) + "_uncertain.extxyz" if trajectory else "uncertain.extxyz"
    guard = MDGuard(len(atoms), s.temperature, s.timestep, s.ensemble == "nve", s.guard_limits)
    atoms.calc = calc
    atoms.get_potential_energy()  # a structure the calculator refuses fails here, as itself (StructureError)
    rng = np.random.default_rng(s.seed)
    thermalize(atoms, s.temperature, rng)
    dyn = _ase_dynamics(atoms, s, rng)
    traj = ase.io.Trajectory(trajectory, "w", atoms) if trajectory else None
    watch = "forces_std" in getattr(calc, "implemented_properties", ())
    columns = {k: [] for k in ("step", "time_ps", "epot", "ekin", "temperature", "etotal")
           + (("max_force_std",) if watch else ())}
    t0 = [time.perf_counter()]
    flagged, stopped = [], [-1]

    def observe():  # every step: the guard first, then (on logged steps) the frame and the log line
        step = dyn.nsteps
        epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        guard.check(step, atoms.positions, epot, ekin)
        # per atom: the norm of each atom's calibrated force-std vector, the largest over atoms
        sigma = float(np.max(np.linalg.norm(calc.results["forces_std"], axis=1))) if watch else None
        if sigma is not None and s.max_force_std is not None and sigma > s.max_force_std:
            _append_frame(uncertain_file, atoms, bool(flagged), step=step, max_force_std=sigma)
            flagged.append(step)
            log(f"step {step:6d}  max force std {sigma:.3f} eV/A > {s.max_force_std} eV/A: frame written to "
                f"{uncertain_file}" + (" for relabelling; stopping" if s.on_uncertain == "stop" else ""))
            if s.on_uncertain == "stop":
                stopped[0] = step
                raise _Uncertain
        if step % s.log_every:
            return
        if traj is not None:
            traj.write(atoms)
        now = time.perf_counter()
        rate = (now - t0[0]) / s.log_every if step else None
        t0[0] = now
        temp = atoms.get_temperature()
        for k, v in zip(columns, (step, step * s.timestep / 1000, epot, ekin, temp, epot + ekin, sigma)):
            columns[k].append(v)
        log(format_log(step, step * s.timestep / 1000, epot, ekin, temp, len(atoms), max_force_std=sigma,
                       seconds_per_step=rate))

    dyn.attach(observe, interval=1)
    try:
        dyn.run(s.steps)
    except _Uncertain:
        pass
    except StructureError as err:  # the calculator refused a state the blow-up produced
        raise guard.failure(dyn.nsteps + 1, err) from err
    finally:
        if traj is not None:
            traj.close()
    out = {k: np.asarray(v) for k, v in columns.items()}
    if watch:
        out.update(uncertain_steps=np.asarray(flagged, int), stopped_at=stopped[0])
    return out
