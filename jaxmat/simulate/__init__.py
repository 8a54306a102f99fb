"""On-device simulation: jitted, batched MD and FIRE relaxation with Verlet neighbour lists.

``Engine`` is the driver (``Engine.md`` with ``MDSettings``, ``Engine.relax`` with ``RelaxSettings``, both
re-exported here from ``jaxmat.md`` / ``jaxmat.relax``); the pieces are pure functions in jax-md
style: factories returning ``Integrator(init, step)`` (the MD integrators ``nve``, ``langevin``,
``nose_hoover``, ``npt_crescale`` over ``Systems``, a padded set of structures; batched FIRE with
cell degrees of freedom, ``fire``, over a ``FireState``) and skinned neighbour lists built on the host and checked on
the device (``build_lists``, ``still_valid``). ``trajectory_paths`` names the files ``Engine.md``
writes.
"""

from jaxmat.errors import NeighborOverflowError
from jaxmat.md import MDSettings
from jaxmat.relax import RelaxSettings
from jaxmat.simulate._engine import Engine
from jaxmat.simulate._fire import FireState, fire
from jaxmat.simulate._host import trajectory_paths
from jaxmat.simulate._integrators import (Dynamics, Integrator, MDState, Systems, kinetic_energy, langevin, nose_hoover,
                                          npt_crescale, nve, temperature)
from jaxmat.simulate._neighbors import build_lists, effective_graph, still_valid

__all__ = ["Dynamics", "Engine", "FireState", "Integrator", "MDSettings", "MDState", "NeighborOverflowError",
           "RelaxSettings", "Systems", "build_lists", "effective_graph", "fire", "kinetic_energy", "langevin", "nose_hoover",
           "npt_crescale", "nve", "still_valid", "temperature", "trajectory_paths"]
