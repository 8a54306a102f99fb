"""jaxmat: a JAX functional research framework for universal interatomic potentials.

Public entry points: ``load_model``, ``jaxmat.calculators.JaxmatCalculator``, the graph helpers in
``jaxmat.graph`` and ``jaxmat.potential.energy_forces_stress``.
"""

from jaxmat.models import DEFAULT_MODEL, Model, list_pretrained, load_model

__version__ = "0.1.0"

__all__ = ["DEFAULT_MODEL", "Model", "list_pretrained", "load_model", "__version__"]
