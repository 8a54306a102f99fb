"""On-device simulation: jitted, batched MD and FIRE relaxation with Verlet neighbour lists.

``Engine`` is the driver (``Engine.md`` with ``MDSettings``, ``Engine.relax`` with ``RelaxSettings``, both
re-exported here from ``jaxmat.md`` / ``jaxmat.relax``); the pieces are pure functions in jax-md
style: integrators (``nve``, ``langevin``, ``nose_hoover``, ``npt_crescale``) over a ``Batch`` of
structures, batched FIRE with cell degrees of freedom (``jaxmat.simulate._fire``) and skinned
neighbour lists built on the host and checked on the device (``build_lists``, ``still_valid``).
"""

from jaxmat.errors import NeighborOverflowError
from jaxmat.md import MDSettings
from jaxmat.relax import RelaxSettings
from jaxmat.simulate._engine import Dynamics, Engine
from jaxmat.simulate._integrators import Batch, Integrator, MDState, kinetic_energy, langevin, nose_hoover, npt_crescale, nve, temperature
from jaxmat.simulate._neighbors import build_lists, effective_graph, still_valid

__all__ = ["Batch", "Dynamics", "Engine", "Integrator", "MDSettings", "MDState", "NeighborOverflowError", "RelaxSettings",
           "build_lists", "effective_graph", "kinetic_energy", "langevin", "nose_hoover", "npt_crescale", "nve",
           "still_valid", "temperature"]
