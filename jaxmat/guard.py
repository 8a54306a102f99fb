"""A simulation guard: stop MD that blows up, before a bad frame is written, and say why.

Any MD engine (the ASE loop of ``jaxmat md`` today, an on-device one later) calls
``MDGuard.check`` with numbers it already has: step, positions, potential and kinetic energy.
Arrays may carry a leading replica axis (``epot``/``ekin`` (B,), positions (B, N, 3)); every
replica is checked. The guard raises ``SimulationError`` when

* the potential or kinetic energy or any position is not finite;
* the temperature exceeds ``max_temperature`` (default ``max(5000 K, 10 x target)``): a runaway;
* in NVE (``conserves_energy``), the total energy per atom moved more than ``max_energy_drift``
  (default 0.02 eV/atom) from its value at the first check.

The message names the step, the time, what went wrong and the likely cause (the timestep, a
structure far from equilibrium), so the user knows what to change.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
from ase import units

from jaxmat._checks import check_instance, positive
from jaxmat.errors import SimulationError

__all__ = ["GuardLimits", "MDGuard", "SimulationError", "runaway_temperature"]


@dataclasses.dataclass(frozen=True)
class GuardLimits:
    """Thresholds of ``MDGuard``."""

    max_temperature: float | None = None  #: K; None: max(5000 K, 10 x the target temperature)
    max_energy_drift: float = 0.02  #: eV/atom; NVE only: |E_tot - E_tot(start)| / N

    RULES: ClassVar[dict] = {"max_temperature": positive(), "max_energy_drift": positive()}

    def __post_init__(self):
        check_instance(self, "GuardLimits")


def runaway_temperature(target: float, limits: GuardLimits) -> float:
    """The temperature (K) above which a run counts as exploded."""
    return limits.max_temperature if limits.max_temperature is not None else max(5000.0, 10.0 * target)


class MDGuard:
    """Checks successive MD states (see the module docstring).

    Args:
      n_atoms: atoms per replica.
      temperature: the target (Langevin) or initial (NVE) temperature, K.
      timestep_fs: the integration timestep, fs (named in the messages).
      conserves_energy: True for NVE (the drift check applies).
      limits: thresholds.
    """

    def __init__(self, n_atoms: int, temperature: float, timestep_fs: float, conserves_energy: bool,
                 limits: GuardLimits = GuardLimits()):
        self.n_atoms, self.target, self.timestep = int(n_atoms), float(temperature), float(timestep_fs)
        self.conserves_energy, self.limits = conserves_energy, limits
        self.max_temperature = runaway_temperature(self.target, limits)
        self.start_energy = None  # (B,) or () total energy at the first check
        self.last_good_step = None

    def _where(self, step: int) -> str:
        return f"MD stopped at step {step} (t = {step * self.timestep / 1000:.4g} ps, timestep {self.timestep:g} fs)"

    def _cause(self) -> str:
        return (f"Likely cause: the timestep ({self.timestep:g} fs) is too large for this system (1-2 fs is usual, "
                "0.5 fs with hydrogen), or the structure starts far from equilibrium (relax it first).")

    def temperature(self, ekin) -> np.ndarray:
        """Instantaneous temperature (K) from the kinetic energy (eV), 3N degrees of freedom."""
        return 2.0 * np.asarray(ekin, np.float64) / (3.0 * self.n_atoms * units.kB)

    def check(self, step: int, positions, epot, ekin) -> None:
        """Raise SimulationError if this state is unphysical; else remember it as the last good one."""
        epot, ekin = np.asarray(epot, np.float64), np.asarray(ekin, np.float64)
        pos = np.asarray(positions, np.float64)
        finite_pos = np.isfinite(pos).all(axis=-1)
        if not (np.isfinite(epot).all() and np.isfinite(ekin).all() and finite_pos.all()):
            what = [name for name, ok in (("potential energy", np.isfinite(epot).all()),
                                          ("kinetic energy", np.isfinite(ekin).all()),
                                          ("positions", finite_pos.all())) if not ok]
            bad_atoms = np.flatnonzero(~finite_pos.reshape(-1, pos.shape[-2]).all(axis=0))[:10].tolist()
            raise SimulationError(
                f"{self._where(step)}: the {' and '.join(what)} became NaN or infinite"
                f"{f' (atoms {bad_atoms})' if bad_atoms else ''}. {self._cause()}")
        temp = self.temperature(ekin)
        if np.any(temp > self.max_temperature):
            raise SimulationError(
                f"{self._where(step)}: the temperature reached {float(np.max(temp)):.4g} K, above the runaway limit "
                f"{self.max_temperature:.4g} K (target {self.target:g} K; GuardLimits(max_temperature=...) or "
                f"--max-temperature sets it). The integration is unstable. {self._cause()}")
        etot = (epot + ekin) / self.n_atoms
        if self.start_energy is None:
            self.start_energy = etot
        elif self.conserves_energy:
            drift = np.abs(etot - self.start_energy)
            if np.any(drift > self.limits.max_energy_drift):
                raise SimulationError(
                    f"{self._where(step)}: in NVE the total energy moved {float(np.max(drift)):.4g} eV/atom from its "
                    f"start (limit {self.limits.max_energy_drift:g} eV/atom; --max-energy-drift sets it): the "
                    f"integration does not conserve energy. {self._cause()}")
        self.last_good_step = step

    def failure(self, step: int, err: Exception) -> SimulationError:
        """A SimulationError for an engine step that raised ``err`` (e.g. the calculator refusing
        atoms that the blow-up pushed onto each other)."""
        last = "" if self.last_good_step is None else f" The last good state was step {self.last_good_step}."
        return SimulationError(f"{self._where(step)}: {err}.{last} {self._cause()}")
