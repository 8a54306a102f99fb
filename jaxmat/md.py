"""Molecular dynamics with ASE integrators and a jaxmat calculator (the ``jaxmat md`` job)."""

from __future__ import annotations

import time
from pathlib import Path

import ase.io
import numpy as np
from ase import units
from ase.build import bulk
from ase.md.langevin import Langevin
from ase.md import velocitydistribution
from ase.md.verlet import VelocityVerlet


def load_structure(spec: str, supercell=None, min_atoms: int = 64):
    """An ``ase.Atoms`` from a file readable by ``ase.io`` or a chemical name for ``ase.build.bulk``
    (e.g. "Si", "Cu", "NaCl:rocksalt:5.64"). Named crystals use the cubic cell where one exists
    and are repeated to at least ``min_atoms`` atoms unless ``supercell`` is given."""
    path = Path(spec)
    if path.is_file():
        atoms = ase.io.read(path)
    else:
        name, *rest = spec.split(":")
        kwargs = {}
        if rest:
            kwargs["crystalstructure"] = rest[0]
        if len(rest) > 1:
            kwargs["a"] = float(rest[1])
        try:
            try:
                atoms = bulk(name, cubic=True, **kwargs)
            except (ValueError, RuntimeError):
                atoms = bulk(name, **kwargs)
        except (ValueError, KeyError, RuntimeError) as err:
            raise ValueError(
                f"{spec!r} is neither a structure file nor a crystal ase.build.bulk knows ({err})"
            ) from None
    if supercell is None and all(atoms.pbc):
        reps = 1
        while len(atoms) * reps**3 < min_atoms:
            reps += 1
        supercell = (reps, reps, reps)
    if supercell is not None:
        atoms = atoms.repeat(tuple(supercell))
    return atoms


def thermalize(atoms, temperature: float, rng) -> None:
    """Maxwell-Boltzmann momenta at ``temperature`` K with zero total momentum."""
    vd = velocitydistribution
    if hasattr(vd, "thermalize_momenta"):  # ASE >= 3.28
        vd.thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    else:  # pragma: no cover - older ASE
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    vd.Stationary(atoms)


def run_md(
    atoms,
    calc,
    temperature: float = 300.0,
    timestep_fs: float = 1.0,
    steps: int = 300,
    ensemble: str = "langevin",
    friction_per_fs: float = 0.01,
    trajectory: str | None = "md.traj",
    log_every: int = 10,
    seed: int = 0,
    printer=print,
):
    """Run MD; returns a dict of arrays (step, time_ps, epot, ekin, temperature, etotal) per log line.

    ``ensemble`` is "langevin" (NVT) or "nve" (velocity Verlet). Velocities start from a
    Maxwell-Boltzmann distribution at ``temperature`` with zero total momentum.
    """
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    thermalize(atoms, temperature, rng)
    if ensemble == "langevin":
        dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature,
                       friction=friction_per_fs / units.fs, rng=rng, fixcm=False)
    elif ensemble == "nve":
        dyn = VelocityVerlet(atoms, timestep_fs * units.fs)
    else:
        raise ValueError(f"ensemble must be 'langevin' or 'nve', got {ensemble!r}")
    if trajectory:
        traj = ase.io.Trajectory(trajectory, "w", atoms)
        dyn.attach(traj.write, interval=log_every)
    log = {k: [] for k in ("step", "time_ps", "epot", "ekin", "temperature", "etotal")}
    t0 = [time.perf_counter()]

    def report():
        epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        step = dyn.nsteps
        now = time.perf_counter()
        rate = (now - t0[0]) / log_every if step else float("nan")
        t0[0] = now
        for k, v in zip(log, (step, step * timestep_fs / 1000, epot, ekin, atoms.get_temperature(), epot + ekin)):
            log[k].append(v)
        printer(
            f"step {step:6d}  t {step * timestep_fs / 1000:7.3f} ps  Epot {epot:12.4f} eV  "
            f"Ekin {ekin:9.4f} eV  T {atoms.get_temperature():7.1f} K  Etot {epot + ekin:12.4f} eV  "
            f"{rate * 1000:7.1f} ms/step"
        )

    dyn.attach(report, interval=log_every)
    dyn.run(steps)
    if trajectory:
        traj.close()
    return {k: np.asarray(v) for k, v in log.items()}
