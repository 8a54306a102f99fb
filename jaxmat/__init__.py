"""jaxmat: a JAX functional research framework for universal interatomic potentials.

Public entry points: ``load_model``, ``jaxmat.calculators.JaxmatCalculator``, the graph helpers in
``jaxmat.graph``, ``jaxmat.potential.energy_forces_stress`` and ``retain_host_memory`` (faster CPU calls).

``import jaxmat`` is light (no JAX or Flax): ``Model`` and ``load_model`` load ``jaxmat.models``
on first use (PEP 562), so the ``jaxmat`` command starts without them for ``--help`` and ``list``.
"""

import importlib
import importlib.util

from jaxmat._host_memory import retain_host_memory
from jaxmat._pretrained import DEFAULT_MODEL, list_pretrained

__version__ = "0.1.0"

_LAZY = {"Model": "jaxmat.models", "load_model": "jaxmat.models"}  # deferred: jax + flax (~2-4 s to import)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"jaxmat.{name}") is not None:
        return importlib.import_module(f"jaxmat.{name}")  # ``jaxmat.graph`` etc. after a bare ``import jaxmat``
    raise AttributeError(f"module 'jaxmat' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["DEFAULT_MODEL", "Model", "list_pretrained", "load_model", "retain_host_memory", "__version__"]
