"""On-device simulation: jitted, batched MD and FIRE relaxation with Verlet neighbour lists.

``Engine`` is the driver (``Engine.md``, ``Engine.relax``); the pieces are pure functions in jax-md
style: integrators (``nve``, ``langevin``, ``nose_hoover``, ``npt_crescale``) over a ``Batch`` of
structures, batched FIRE with cell degrees of freedom (``jaxmat.simulate._fire``) and skinned
neighbour lists built on the host and checked on the device (``build_lists``, ``still_valid``).
"""

from jaxmat.simulate._engine import Dynamics, Engine
from jaxmat.simulate._integrators import Batch, Integrator, MDState, kinetic_energy, langevin, nose_hoover, npt_crescale, nve, temperature
from jaxmat.simulate._neighbors import NeighborOverflowError, build_lists, effective_graph, still_valid

__all__ = ["Batch", "Dynamics", "Engine", "Integrator", "MDState", "NeighborOverflowError", "build_lists",
           "effective_graph", "kinetic_energy", "langevin", "nose_hoover", "npt_crescale", "nve", "still_valid",
           "temperature"]
