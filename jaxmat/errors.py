"""Every exception jaxmat raises on purpose, in one namespace.

Input errors are ``ValueError`` subclasses (caught by ``except ValueError``); runs that blew up are
``RuntimeError`` subclasses. Each message names the offending file, field, atom or step.

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

from jaxmat._checks import ConfigError
from jaxmat.data import DatasetError
from jaxmat.graph import StructureError
from jaxmat.guard import SimulationError
from jaxmat.models import BundleError, UnknownElementError
from jaxmat.train._checkpoint import CheckpointError
from jaxmat.train._trainer import TrainingError

__all__ = ["BundleError", "CheckpointError", "ConfigError", "DatasetError", "SimulationError", "StructureError",
           "TrainingError", "UnknownElementError"]
