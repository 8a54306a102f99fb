"""Structure relaxation through ASE (the ``jaxmat relax --engine ase`` job) and the shared result
table and output file of every relaxation engine.

Positions and cell relax together through ASE's ``FrechetCellFilter`` (a log-deformation cell
coordinate scaled by the number of atoms, as matgl's ``Relaxer``); ``fix_cell`` relaxes positions
only. Converged means: the largest force row of the optimised coordinates (atoms, and the three cell
rows when the cell relaxes) is below ``fmax`` (eV/A). A structure whose energy or forces turn
non-finite, whose volume leaves [1/8, 8] x its start, or that the calculator refuses (atoms pushed
onto each other) has diverged: it is reported and never written as relaxed.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import ase.io
import numpy as np
from ase import units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE

from jaxmat._checks import between, check_instance, non_negative, one_of, positive
from jaxmat.errors import ConfigError, StructureError

#: a relaxation whose volume leaves [1/MAX_VOLUME_RATIO, MAX_VOLUME_RATIO] x its start has diverged
MAX_VOLUME_RATIO = 8.0


@dataclasses.dataclass(frozen=True)
class RelaxSettings:
    """Settings of a relaxation, checked when made (``ConfigError`` names the bad one)."""

    optimizer: str = "fire"  #: "fire" or "bfgs" (ASE engine; the jax engine is always FIRE)
    fmax: float = 0.05  #: eV/A: converged when every force row (atoms and cell) is below this
    steps: int = 500  #: optimizer steps at most
    fix_cell: bool = False  #: relax the positions only
    pressure: float | None = None  #: GPa: target hydrostatic pressure of the cell relaxation (None: 0); refused with fix_cell

    RULES: ClassVar[dict] = {"optimizer": one_of("fire", "bfgs"), "fmax": positive(), "steps": non_negative(),
                             "pressure": between(-1000.0, 1000.0)}

    def __post_init__(self):
        check_instance(self, "relax")
        if self.fix_cell and self.pressure is not None:
            raise ConfigError(f"relax.pressure = {self.pressure} GPa with fix_cell: a fixed cell cannot follow a target "
                              "pressure, so it would be ignored; drop --fix-cell to relax the cell at that pressure, "
                              "or leave the pressure out")

    @property
    def pressure_ev_a3(self) -> float:
        """The target pressure in eV/A^3 (jaxmat's stress unit; 0 when not given)."""
        return (self.pressure or 0.0) * units.GPa


class Relaxed(NamedTuple):
    """One relaxation's outcome.

    ``atoms`` is the relaxed structure (None if it diverged) with energy, forces and stress attached
    (the true forces -dE/dr, also on atoms a constraint fixes: read them with
    ``get_forces(apply_constraint=False)``, as ASE's own ``get_forces`` zeroes them; ``atoms.info`` has ``relax_steps``, ``relax_converged``, ``relax_fmax``); ``error`` says why a
    diverged structure was dropped.
    """

    name: str
    formula: str
    n_atoms: int
    steps: int
    energy_per_atom: float
    volume_change: float  #: V_final / V_start - 1 (nan without a cell)
    max_force: float  #: eV/A, the largest force row of the optimised coordinates
    converged: bool
    atoms: object = None
    error: str | None = None


class _Diverged(Exception):
    pass


def _volume(atoms) -> float:
    return float(abs(np.linalg.det(atoms.cell.array))) if all(atoms.pbc) else float("nan")


def relax_record(name, atoms, energy, forces, stress, steps, converged, fmax_now, volume0, error=None) -> Relaxed:
    """A ``Relaxed`` record; attaches the results to ``atoms`` (a copy) when it did not diverge."""
    n = len(atoms)
    if error is not None:
        return Relaxed(name, atoms.get_chemical_formula(), n, steps, float("nan"), float("nan"), float("nan"),
                       False, None, error)
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, energy=float(energy), forces=np.asarray(forces),
                                     **({"stress": np.asarray(stress)} if stress is not None else {}))
    out.info.update(relax_steps=int(steps), relax_converged=bool(converged), relax_fmax=float(fmax_now))
    dv = _volume(out) / volume0 - 1.0 if np.isfinite(volume0) else float("nan")
    return Relaxed(name, out.get_chemical_formula(), n, int(steps), float(energy) / n, dv, float(fmax_now),
                   bool(converged), out)


def check_pressure_applies(structures, settings: RelaxSettings, names=None) -> None:
    """ConfigError when a target pressure is given but a structure's cell cannot relax (not periodic
    in all three directions: a molecule, a slab), so the pressure would be ignored without a word.
    The one rule for both relaxation engines."""
    if settings.pressure is None:
        return
    for k, a in enumerate(structures):
        if not all(a.pbc):
            name = names[k] if names else f"#{k}"
            raise ConfigError(f"relax.pressure = {settings.pressure} GPa, but structure {name} ({a.get_chemical_formula()}, "
                              f"pbc={np.asarray(a.pbc).tolist()}) is not periodic in all three directions, so its cell "
                              "cannot relax and the pressure would be ignored; leave --pressure out for it")


def relax_ase(atoms, calc, settings: RelaxSettings = RelaxSettings(), name: str = "") -> Relaxed:
    """Relax one structure with ASE's FIRE or BFGS (positions and, unless ``fix_cell``, the cell
    through ``FrechetCellFilter``). The input is not modified. Never raises for a structure that
    diverges: the record's ``error`` says why."""
    if not isinstance(settings, RelaxSettings):
        raise TypeError(f"relax_ase: settings must be a jaxmat.relax.RelaxSettings, got {type(settings).__name__}")
    check_pressure_applies([atoms], settings, [name or "#0"])
    work = atoms.copy()
    work.calc = calc
    relax_cell = not settings.fix_cell and all(work.pbc)
    volume0 = _volume(work)
    target = FrechetCellFilter(work, scalar_pressure=settings.pressure_ev_a3) if relax_cell else work
    opt_cls = FIRE if settings.optimizer == "fire" else BFGS
    opt = opt_cls(target, logfile=None)

    def watch():
        e, f = work.get_potential_energy(), work.get_forces()
        if not (np.isfinite(e) and np.isfinite(f).all()):
            raise _Diverged("the energy or forces became NaN or infinite")
        if relax_cell:
            ratio = _volume(work) / volume0
            if not (1.0 / MAX_VOLUME_RATIO < ratio < MAX_VOLUME_RATIO):
                raise _Diverged(f"the volume changed {ratio:.3g}x (outside [1/{MAX_VOLUME_RATIO:g}, "
                                f"{MAX_VOLUME_RATIO:g}]x its start)")

    opt.attach(watch, interval=1)
    try:
        converged = bool(opt.run(fmax=settings.fmax, steps=settings.steps))
    except _Diverged as err:
        return relax_record(name, work, None, None, None, opt.nsteps, False, None, volume0,
                      f"diverged at step {opt.nsteps}: {err}")
    except StructureError as err:
        return relax_record(name, work, None, None, None, opt.nsteps, False, None, volume0,
                      f"diverged at step {opt.nsteps}: {err}")
    fmax_now = float(np.sqrt((target.get_forces() ** 2).sum(axis=1).max()))
    stress = work.get_stress() if all(work.pbc) else None
    # the true forces (those a fresh calculator gives), not the constraint-projected ones (zero on fixed atoms)
    return relax_record(name, work, work.get_potential_energy(), work.get_forces(apply_constraint=False), stress,
                  opt.nsteps, converged, fmax_now, volume0)


def format_table(records) -> str:
    """One line per structure: name, formula, steps, E/atom, volume change, max force, converged."""
    lines = [f"{'structure':24s} {'formula':14s} {'steps':>6s} {'E/atom [eV]':>12s} {'dV [%]':>8s} "
             f"{'max F [eV/A]':>12s}  converged"]
    for r in records:
        if r.error is not None:
            lines.append(f"{r.name[:24]:24s} {r.formula[:14]:14s} {r.steps:6d} {'-':>12s} {'-':>8s} {'-':>12s}  "
                         f"FAILED: {r.error}")
            continue
        dv = f"{100 * r.volume_change:8.2f}" if np.isfinite(r.volume_change) else f"{'-':>8s}"
        lines.append(f"{r.name[:24]:24s} {r.formula[:14]:14s} {r.steps:6d} {r.energy_per_atom:12.5f} {dv} "
                     f"{r.max_force:12.4f}  {'yes' if r.converged else 'no'}")
    return "\n".join(lines)


def write_relaxed(records, path) -> int:
    """Write the structures that did not diverge to ``path`` (extxyz: energy, forces, stress and
    ``info`` relax_steps/relax_converged/relax_fmax); returns how many were written."""
    good = [r.atoms for r in records if r.atoms is not None]
    if good:
        ase.io.write(path, good, format="extxyz")
    return len(good)
