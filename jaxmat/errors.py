"""Every exception jaxmat raises on purpose, defined here and nowhere else.

Input errors are ``ValueError`` subclasses (caught by ``except ValueError``); runs that blew up are
``RuntimeError`` subclasses. Each message names the offending file, field, atom or step. This module
imports nothing, so every other module imports its exceptions from here (downwards); the old homes
(``jaxmat._checks.ConfigError``, ``jaxmat.graph.StructureError``, ...) re-export the same classes.

| exception | raised when |
|---|---|
| ``ConfigError`` | a setting (training config field, MD option, calculator argument, hyperparameter) has the wrong type or range |
| ``StructureError`` | a structure is empty, non-finite, degenerate, collapsed, or too dense (neighbour/triplet caps) |
| ``RefusedStructure`` | (a ``StructureError``) the on-device engine's graph builder refused structure ``index`` of a batch |
| ``UnknownElementError`` | a structure holds an element the model does not know |
| ``FormulaError`` | a chemical formula cannot be parsed (unknown element, bad characters, unbalanced brackets) |
| ``BundleError`` | a model bundle is missing, corrupt, edited after saving, or holds non-finite weights |
| ``DatasetError`` | a data file cannot be read, or a frame has missing or non-finite labels |
| ``CheckpointError`` | a training checkpoint is corrupt or does not fit the run |
| ``ConversionError`` | a matgl folder cannot be converted (unsupported architecture, unexpected tensors) |
| ``SimulationError`` | MD became non-finite, ran away in temperature, or broke NVE energy conservation |
| ``NeighborOverflowError`` | the on-device engine's rebuilt neighbour lists need more room than ``Engine(grow=False)`` allows |
| ``TrainingError`` | training produced a non-finite loss, gradient or parameter |
"""


class ConfigError(ValueError):
    """A setting (config field, command-line option, keyword argument, hyperparameter) of the
    wrong type or outside its allowed range."""


class StructureError(ValueError):
    """An input structure that no potential can evaluate meaningfully."""


class RefusedStructure(StructureError):
    """The graph builder refused structure ``index`` of a batch (``cause`` says why)."""

    def __init__(self, index: int, cause: Exception):
        super().__init__(f"structure {index}: {cause}")
        self.index, self.cause = index, cause


class UnknownElementError(ValueError):
    """A structure holds an element the model was not trained on."""


class FormulaError(ValueError):
    """A formula that cannot be parsed (unknown element, bad characters, unbalanced brackets...)."""


class BundleError(ValueError):
    """A model bundle that is missing, corrupt or incompatible with this jaxmat."""


class DatasetError(ValueError):
    """A dataset frame that cannot be used: missing or non-finite labels, bad structure."""


class CheckpointError(ValueError):
    """A checkpoint that is corrupt or does not fit the current run."""


class ConversionError(ValueError):
    """The matgl folder cannot be converted (unsupported architecture or unexpected tensors)."""


class SimulationError(RuntimeError):
    """A simulation that became unphysical (non-finite, runaway temperature, energy not conserved)."""


class NeighborOverflowError(RuntimeError):
    """A rebuilt neighbour list needs more room than the fixed capacity allows."""


class TrainingError(RuntimeError):
    """Training produced a non-finite loss, gradient or parameter (nothing non-finite is saved)."""


__all__ = ["BundleError", "CheckpointError", "ConfigError", "ConversionError", "DatasetError", "FormulaError",
           "NeighborOverflowError", "RefusedStructure", "SimulationError", "StructureError", "TrainingError",
           "UnknownElementError"]
