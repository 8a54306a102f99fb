"""jaxmat: a JAX functional research framework for universal interatomic potentials.

Public entry points: ``load_model``, ``jaxmat.calculators.JaxmatCalculator``, the graph helpers in
``jaxmat.graph``, ``jaxmat.potential.energy_forces_stress`` and ``retain_host_memory`` (faster CPU calls).
"""

from jaxmat._host_memory import retain_host_memory
from jaxmat.models import DEFAULT_MODEL, Model, list_pretrained, load_model

__version__ = "0.1.0"

__all__ = ["DEFAULT_MODEL", "Model", "list_pretrained", "load_model", "retain_host_memory", "__version__"]
