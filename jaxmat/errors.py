"""Every exception jaxmat raises on purpose, in one namespace.

Input errors are ``ValueError`` subclasses (caught by ``except ValueError``); runs that blew up are
``RuntimeError`` subclasses, defined here. Each message names the offending file, field, atom or
step. Importing this module is cheap: the input errors are loaded from their modules on first use.

| exception | raised when |
|---|---|
| ``ConfigError`` | a setting (training config field, MD option, calculator argument, hyperparameter) has the wrong type or range |
| ``StructureError`` | a structure is empty, non-finite, degenerate, collapsed, or too dense (neighbour/triplet caps) |
| ``UnknownElementError`` | a structure holds an element the model does not know |
| ``BundleError`` | a model bundle is missing, corrupt, edited after saving, or holds non-finite weights |
| ``DatasetError`` | a data file cannot be read, or a frame has missing or non-finite labels |
| ``CheckpointError`` | a training checkpoint is corrupt or does not fit the run |
| ``SimulationError`` | MD became non-finite, ran away in temperature, or broke NVE energy conservation |
| ``TrainingError`` | training produced a non-finite loss, gradient or parameter |
"""

import importlib


class SimulationError(RuntimeError):
    """A simulation that became unphysical (non-finite, runaway temperature, energy not conserved)."""


class TrainingError(RuntimeError):
    """Training produced a non-finite loss, gradient or parameter (nothing non-finite is saved)."""


_LAZY = {"ConfigError": "jaxmat._checks", "StructureError": "jaxmat.graph._structure",
         "UnknownElementError": "jaxmat.models._model", "BundleError": "jaxmat.models._bundle",
         "DatasetError": "jaxmat.data._read", "CheckpointError": "jaxmat.train._checkpoint"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'jaxmat.errors' has no attribute {name!r}")


__all__ = ["BundleError", "CheckpointError", "ConfigError", "DatasetError", "SimulationError", "StructureError",
           "TrainingError", "UnknownElementError"]
