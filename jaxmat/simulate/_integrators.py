"""MD integrators for a batch of structures, as pure functions (jax-md style factories).

Units are ASE's: positions A, momenta amu A / t_ase, masses amu, energies eV, time ``ase.units.fs``
per fs. Every array is flat over the batch's atoms (N, ...) or per structure (G, ...), padding
included; ``Systems`` says which atom belongs to which structure. Each factory returns
``Integrator(init, step)``:

* ``init(state, potential) -> state`` evaluates the forces of the starting state;
* ``step(state, potential) -> state`` advances one timestep.

``potential(positions, cell) -> dict(energy (G,), forces (N, 3), stress (G, 3, 3))`` is the model
through ``jaxmat.potential.energy_forces_stress`` (the one place forces and stress are derived).

``Dynamics`` names one of them with its parameters (hashable: a static argument of the jitted chunk).

Integrators: ``nve`` (velocity Verlet, step for step ASE's ``VelocityVerlet``), ``langevin`` (BAOAB,
Leimkuhler & Matthews 2013), ``nose_hoover`` (one Nose-Hoover thermostat per structure, symmetric
Trotter splitting) and ``npt_crescale`` (isotropic stochastic cell rescaling, Bernetti & Bussi 2020,
with the Langevin thermostat). Constrained coordinates (``Systems.free``: ASE's ``FixAtoms`` /
``FixScaled``) get no force, no noise and no momentum, so they never move (in NPT a fixed atom keeps
its fractional coordinates while the cell scales). Random numbers depend only on (structure seed,
step, atom index within the structure), so a structure's trajectory is the same alone or in any
batch.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from ase import units


class Systems(NamedTuple):
    """Which atoms form which structure (all padded; device arrays).

    graph_index (N,) int32; node_mask (N,) bool; local (N,) int32 atom index within its structure;
    masses (N,) amu (1 on padding); n_atoms (G,) float; graph_mask (G,) bool; seeds (G,) uint32;
    kT (G,) eV, the target (or initial) temperature times k_B; periodic (G,) bool, periodic in all
    three directions (and real); free (N, 3), 1 where a coordinate may move and 0 where a constraint
    fixes it (``jaxmat.simulate._constraints``), or None when no structure has constraints.
    """

    graph_index: object
    node_mask: object
    local: object
    masses: object
    n_atoms: object
    graph_mask: object
    seeds: object
    kT: object
    periodic: object
    free: object = None


class MDState(NamedTuple):
    """positions, momenta, forces (N, 3); cell (G, 3, 3); energy (G,) eV; stress (G, 3, 3) eV/A^3;
    thermostat (G,) (Nose-Hoover velocity, 1/t_ase; else 0); step () int32."""

    positions: object
    momenta: object
    forces: object
    cell: object
    energy: object
    stress: object
    thermostat: object
    step: object


class Integrator(NamedTuple):
    init: Callable
    step: Callable


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


def per_structure(values, batch: Systems):
    """Sum per-atom values (N,) over each structure -> (G,)."""
    return jax.ops.segment_sum(values, batch.graph_index, num_segments=batch.n_atoms.shape[0])


def kinetic_energy(momenta, batch: Systems):
    """(G,) eV."""
    return per_structure(jnp.sum(momenta**2, axis=1) / (2.0 * batch.masses) * batch.node_mask, batch)


def constrain(vectors, batch: Systems):
    """Per-atom vectors (N, 3) (forces, momenta) with the fixed coordinates zeroed (unchanged, and no
    operation at all, without constraints)."""
    return vectors if batch.free is None else vectors * batch.free


def degrees_of_freedom(batch: Systems):
    """(G,) 3 N per structure, less the coordinates its constraints fix."""
    if batch.free is None:
        return 3.0 * batch.n_atoms
    return per_structure(jnp.sum(batch.free, axis=1), batch)


def temperature(momenta, batch: Systems):
    """(G,) K, with 3 N degrees of freedom per structure less the fixed ones (as ASE's
    ``get_temperature``)."""
    return 2.0 * kinetic_energy(momenta, batch) / (jnp.maximum(degrees_of_freedom(batch), 1.0) * units.kB)


def _evaluate(state: MDState, potential, positions, cell=None) -> MDState:
    cell = state.cell if cell is None else cell
    out = potential(positions, cell)
    return state._replace(positions=positions, cell=cell, forces=out["forces"], energy=out["energy"],
                          stress=out.get("stress", state.stress))


def _init(state: MDState, potential) -> MDState:
    return _evaluate(state, potential, state.positions)


def gaussian(batch: Systems, step, dtype):
    """Standard normal noise (N, 3), a function of (seed of the structure, step, atom index in it)."""

    def one(seed, local):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), local)
        return jax.random.normal(key, (3,), dtype)

    return jax.vmap(one)(batch.seeds[batch.graph_index], batch.local) * batch.node_mask[:, None]


def nve(dt_fs: float, batch: Systems) -> Integrator:
    """Velocity Verlet: p += dt/2 F; r += dt p/m; F = F(r); p += dt/2 F."""
    dt = dt_fs * units.fs

    def step(state: MDState, potential) -> MDState:
        p = state.momenta + 0.5 * dt * constrain(state.forces, batch)
        new = _evaluate(state, potential, state.positions + dt * p / batch.masses[:, None])
        return new._replace(momenta=p + 0.5 * dt * constrain(new.forces, batch), step=state.step + 1)

    return Integrator(_init, step)


def _ou(p, batch: Systems, c1, step):
    """The O step of BAOAB: exact Ornstein-Uhlenbeck update of the momenta at temperature kT."""
    sigma = jnp.sqrt((1.0 - c1**2) * batch.masses * batch.kT[batch.graph_index])[:, None]
    return constrain(c1 * p + sigma * gaussian(batch, step, p.dtype), batch)


def langevin(dt_fs: float, friction_per_fs: float, batch: Systems) -> Integrator:
    """BAOAB Langevin dynamics (NVT) at ``batch.kT``; friction in 1/fs."""
    dt = dt_fs * units.fs
    c1 = jnp.exp(-friction_per_fs * dt_fs)

    def step(state: MDState, potential) -> MDState:
        inv_m = 1.0 / batch.masses[:, None]
        p = state.momenta + 0.5 * dt * constrain(state.forces, batch)
        r = state.positions + 0.5 * dt * p * inv_m
        p = _ou(p, batch, c1, state.step)
        new = _evaluate(state, potential, r + 0.5 * dt * p * inv_m)
        return new._replace(momenta=p + 0.5 * dt * constrain(new.forces, batch), step=state.step + 1)

    return Integrator(_init, step)


def nose_hoover(dt_fs: float, tau_fs: float, batch: Systems) -> Integrator:
    """Nose-Hoover NVT, one thermostat per structure with mass Q = g kT tau^2 (tau in fs; g = 3N less
    the fixed coordinates):
    thermostat half step, velocity Verlet, thermostat half step."""
    dt = dt_fs * units.fs
    g = degrees_of_freedom(batch)
    Q = g * batch.kT * (tau_fs * units.fs) ** 2
    Q = jnp.where(Q > 0, Q, 1.0)

    def half(p, xi):
        k2 = 2.0 * kinetic_energy(p, batch)
        xi = xi + 0.25 * dt * (k2 - g * batch.kT) / Q
        p = p * jnp.exp(-0.5 * dt * xi)[batch.graph_index][:, None]
        k2 = 2.0 * kinetic_energy(p, batch)
        return p, xi + 0.25 * dt * (k2 - g * batch.kT) / Q

    def step(state: MDState, potential) -> MDState:
        p, xi = half(state.momenta, state.thermostat)
        p = p + 0.5 * dt * constrain(state.forces, batch)
        new = _evaluate(state, potential, state.positions + dt * p / batch.masses[:, None])
        p, xi = half(p + 0.5 * dt * constrain(new.forces, batch), xi)
        return new._replace(momenta=p, thermostat=xi, step=state.step + 1)

    return Integrator(_init, step)


def npt_crescale(dt_fs: float, friction_per_fs: float, pressure: float, tau_p_fs: float, compressibility: float,
                 batch: Systems) -> Integrator:
    """Isotropic NPT: BAOAB Langevin thermostat plus stochastic cell rescaling (C-rescale) of
    every periodic structure towards ``pressure`` (eV/A^3), with relaxation time ``tau_p_fs`` and
    isothermal ``compressibility`` (A^3/eV). Needs stress from the potential."""
    thermostat = langevin(dt_fs, friction_per_fs, batch)
    rate = compressibility / tau_p_fs * dt_fs  # beta_T dt / tau_p

    def step(state: MDState, potential) -> MDState:
        # barostat first, from the pressure of the current state; the thermostat step then
        # evaluates the forces once at the rescaled positions (its first half kick uses the forces
        # of the unscaled ones, an O(d_eps) error of the size of the rescaling, ~1e-5)
        volume = jnp.where(batch.graph_mask, jnp.abs(jnp.linalg.det(state.cell)), 1.0)
        kin = kinetic_energy(state.momenta, batch)
        p_int = 2.0 * kin / (3.0 * volume) - jnp.trace(state.stress, axis1=1, axis2=2) / 3.0

        def noise(seed):
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), state.step), 1 << 30)
            return jax.random.normal(key, (), volume.dtype)

        d_eps = (-rate * (pressure - p_int - batch.kT / volume)
                 + jnp.sqrt(2.0 * batch.kT * rate / volume) * jax.vmap(noise)(batch.seeds)) * batch.graph_mask
        mu = jnp.exp(d_eps / 3.0)
        scaled = state._replace(positions=state.positions * mu[batch.graph_index][:, None],
                                cell=state.cell * mu[:, None, None],
                                momenta=state.momenta / mu[batch.graph_index][:, None])
        return thermostat.step(scaled, potential)

    return Integrator(_init, step)
