"""Batched FIRE relaxation of positions and cells on the device, jax-md style: ``fire(...)`` returns
``Integrator(init, step)`` of pure functions, as the MD integrators do; ``start(atoms)`` is the host
piece of a structure's starting state (``jaxmat.simulate._layout.join`` pads pieces into a
``FireState``).

Each structure of the batch has its own FIRE parameters (dt, alpha, step count) and follows ASE's
``FIRE`` (same defaults and update order: mix, then ``v += dt F``, then the step limited to
``maxstep`` in norm over the structure's coordinates). The coordinates are those of ASE's
``FrechetCellFilter``: s = r D^-1 for the atoms and L = n_atoms x log(D) for the cell, where
cell = cell_0 D. The cell's generalised force is the exact -dH/dL of the enthalpy
H = E + P V, obtained from the stress through the derivative of the matrix exponential
(``jax.vjp`` of ``expm``): dE/dD = D^-T V sigma. A structure is done when its largest force row
(atoms, and the three cell rows) is below ``fmax``; done and failed structures stay frozen while the
others go on. Coordinates a constraint fixes (``Systems.free``) get no generalised force, so they
never move: with a fixed cell the atom stays where it is, bit for bit; with a relaxing cell it keeps
its coordinates s, i.e. its fractional coordinates, as under ASE's filter. ``cartesian_forces`` stay
the true -dE/dr. A structure whose energy turns non-finite or whose volume leaves
[1/8, 8] x its start fails (``jaxmat.relax.MAX_VOLUME_RATIO``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import expm

from jaxmat.relax import MAX_VOLUME_RATIO
from jaxmat.simulate._integrators import Integrator, constrain

#: ASE FIRE defaults
FIRE_DEFAULTS = dict(dt=0.1, maxstep=0.2, dtmax=1.0, n_min=5, finc=1.1, fdec=0.5, astart=0.1, fa=0.99)
#: the per-atom fields of ``FireState`` (the others are per structure)
FIRE_NODE = ("dof", "velocity", "forces", "positions", "cartesian_forces")
#: the per-structure values of a padding structure (done: it never moves)
PADDING = {"log_deform": np.zeros((3, 3)), "cell_velocity": np.zeros((3, 3)), "cell_forces": np.zeros((3, 3)),
           "ref_cell": np.eye(3), "cell": np.eye(3), "energy": 0.0, "stress": np.zeros((3, 3)), "fmax": 0.0,
           "dt": 0.1, "alpha": 0.1, "n_pos": 0, "started": False, "done": True, "failed": False, "steps": 0}


class FireState(NamedTuple):
    """Per atom (N, 3): dof (s), velocity, forces (generalised), positions (r), cartesian_forces
    (-dE/dr). Per structure:
    log_deform, cell_velocity, cell_forces, ref_cell, cell (G, 3, 3); energy (G,) eV, stress
    (G, 3, 3) eV/A^3, fmax (G,) eV/A, dt, alpha (G,), n_pos (G,) int, started, done, failed (G,)
    bool, steps (G,) int."""

    dof: object
    velocity: object
    forces: object
    positions: object
    cartesian_forces: object
    log_deform: object
    cell_velocity: object
    cell_forces: object
    ref_cell: object
    cell: object
    energy: object
    stress: object
    fmax: object
    dt: object
    alpha: object
    n_pos: object
    started: object
    done: object
    failed: object
    steps: object


def _segment(values, batch, op=jax.ops.segment_sum):
    return op(values, batch.graph_index, num_segments=batch.n_atoms.shape[0])


def _geometry(dof, log_deform, ref_cell, batch, relax_cell):
    """r (N, 3) and cell (G, 3, 3) from the FIRE coordinates; also D (G, 3, 3)."""
    if not relax_cell:
        return dof, ref_cell, jnp.broadcast_to(jnp.eye(3, dtype=dof.dtype), ref_cell.shape)
    f = jnp.maximum(batch.n_atoms, 1.0)[:, None, None]
    D = jax.vmap(expm)(log_deform / f)
    return jnp.einsum("ni,nij->nj", dof, D[batch.graph_index]), ref_cell @ D, D


def evaluate(state: FireState, potential, batch, relax_cell: bool, pressure: float) -> FireState:
    """Energy, generalised forces and fmax at the state's coordinates."""
    r, cell, D = _geometry(state.dof, state.log_deform, state.ref_cell, batch, relax_cell)
    out = potential(r, cell)
    # F_s = F_r D^T; a fixed coordinate of s (FixAtoms, FixScaled on a diagonal cell: a fractional one)
    forces = constrain(jnp.einsum("nj,nij->ni", out["forces"], D[batch.graph_index]), batch)
    row = jnp.sqrt(jnp.sum(forces**2, axis=1)) * batch.node_mask
    fmax = jnp.maximum(_segment(row, batch, jax.ops.segment_max), 0.0)
    cell_forces = jnp.zeros_like(state.cell_forces)
    if relax_cell:
        f = jnp.maximum(batch.n_atoms, 1.0)[:, None, None]
        volume = jnp.where(batch.periodic, jnp.abs(jnp.linalg.det(cell)), 0.0)[:, None, None]
        eye = jnp.eye(3, dtype=cell.dtype)
        dH_dD = jnp.linalg.solve(jnp.swapaxes(D, 1, 2), volume * (out["stress"] + pressure * eye))
        _, vjp = jax.vjp(lambda x: jax.vmap(expm)(x / f), state.log_deform)
        cell_forces = -vjp(dH_dD)[0] * batch.periodic[:, None, None]  # open cells stay fixed
        fmax = jnp.maximum(fmax, jnp.max(jnp.sqrt(jnp.sum(cell_forces**2, axis=2)), axis=1))
    return state._replace(forces=forces * batch.node_mask[:, None], positions=r, cartesian_forces=out["forces"], cell=cell, energy=out["energy"],
                          stress=out["stress"], cell_forces=cell_forces, fmax=fmax)


def fire(batch, relax_cell: bool, pressure, fmax, max_steps) -> Integrator:
    """Batched FIRE over ``batch`` (jax-md style: pure ``init`` and ``step``, like the MD integrators).

    ``relax_cell``: the cell relaxes too (static); ``pressure`` (eV/A^3), ``fmax`` (eV/A) and ``max_steps``
    may be traced values.

    * ``init(state, potential) -> state`` evaluates the energy, forces and fmax of the state's
      coordinates and marks done the structures already below ``fmax``;
    * ``step(state, potential) -> state`` is one FIRE step of every structure not done or failed.
    """

    def init(state: FireState, potential) -> FireState:
        state = evaluate(state, potential, batch, relax_cell, pressure)
        return state._replace(done=state.done | (state.fmax < fmax))

    def step(state: FireState, potential) -> FireState:
        return _step(state, potential, batch, relax_cell, pressure, fmax, max_steps)

    return Integrator(init, step)


def start(atoms) -> dict:
    """The host piece (numpy, one structure) of a structure at its start: D = I, no velocity, ASE's
    initial dt and alpha, nothing evaluated yet (``fire(...).init`` does that)."""
    n = len(atoms)
    z, z3 = np.zeros((n, 3)), np.zeros((3, 3))
    return {"dof": atoms.positions.copy(), "velocity": z, "forces": z, "positions": atoms.positions.copy(),
            "cartesian_forces": z, "log_deform": z3, "cell_velocity": z3, "cell_forces": z3,
            "ref_cell": atoms.cell.array.copy(), "cell": atoms.cell.array.copy(), "energy": np.array(0.0),
            "stress": z3, "fmax": np.array(np.inf), "dt": np.array(FIRE_DEFAULTS["dt"]),
            "alpha": np.array(FIRE_DEFAULTS["astart"]), "n_pos": np.array(0, np.int32), "started": np.array(False),
            "done": np.array(False), "failed": np.array(False), "steps": np.array(0, np.int32)}


def _step(state: FireState, potential, batch, relax_cell: bool, pressure: float, fmax, max_steps) -> FireState:
    """One FIRE step of every structure not yet done or failed (ASE's order), then new forces.

    A structure whose forces are already below ``fmax`` is marked done without moving (as ASE checks
    convergence before each step)."""
    p = FIRE_DEFAULTS
    gi = batch.graph_index
    done = state.done | (state.fmax < fmax)
    active = ~done & ~state.failed & (state.steps < max_steps)
    F, V, FL, VL = state.forces, state.velocity, state.cell_forces, state.cell_velocity

    def dot(a, b, ca, cb):
        return _segment(jnp.sum(a * b, axis=1), batch) + jnp.sum(ca * cb, axis=(1, 2))

    vf, ff, vv = dot(F, V, FL, VL), dot(F, F, FL, FL), dot(V, V, VL, VL)
    uphill = state.started & (vf <= 0)
    mix = state.started & (vf > 0)
    a = state.alpha
    coef = jnp.where(mix, a * jnp.sqrt(vv) / jnp.where(ff > 0, jnp.sqrt(ff), 1.0), 0.0)
    keep = jnp.where(uphill, 0.0, jnp.where(mix, 1.0 - a, 1.0))
    V = keep[gi][:, None] * V + coef[gi][:, None] * F
    VL = keep[:, None, None] * VL + coef[:, None, None] * FL
    grow = mix & (state.n_pos > p["n_min"])
    dt = jnp.where(grow, jnp.minimum(state.dt * p["finc"], p["dtmax"]), jnp.where(uphill, state.dt * p["fdec"], state.dt))
    alpha = jnp.where(grow, a * p["fa"], jnp.where(uphill, p["astart"], a))
    n_pos = jnp.where(mix, state.n_pos + 1, jnp.where(uphill, 0, state.n_pos))
    V = V + dt[gi][:, None] * F
    VL = VL + dt[:, None, None] * FL
    dr, dL = dt[gi][:, None] * V, dt[:, None, None] * VL
    norm = jnp.sqrt(dot(dr, dr, dL, dL))
    limit = jnp.where(norm > p["maxstep"], p["maxstep"] / jnp.where(norm > 0, norm, 1.0), 1.0)
    move = jnp.where(active, limit, 0.0)
    new = state._replace(
        dof=state.dof + move[gi][:, None] * dr, log_deform=state.log_deform + move[:, None, None] * dL,
        velocity=jnp.where(active[gi][:, None], V, state.velocity),
        cell_velocity=jnp.where(active[:, None, None], VL, state.cell_velocity),
        dt=jnp.where(active, dt, state.dt), alpha=jnp.where(active, alpha, state.alpha),
        n_pos=jnp.where(active, n_pos, state.n_pos), started=state.started | active, done=done,
        steps=state.steps + active.astype(jnp.int32))
    new = evaluate(new, potential, batch, relax_cell, pressure)
    finite = jnp.isfinite(new.energy) & jnp.isfinite(new.fmax)
    v0 = jnp.where(batch.periodic, jnp.abs(jnp.linalg.det(new.ref_cell)), 1.0)
    ratio = jnp.where(batch.periodic, jnp.abs(jnp.linalg.det(new.cell)), 1.0) / jnp.where(v0 > 0, v0, 1.0)
    blown = relax_cell & ((ratio > MAX_VOLUME_RATIO) | (ratio < 1.0 / MAX_VOLUME_RATIO))
    return new._replace(failed=new.failed | (active & (~finite | blown)))
