"""Datasets: labelled frames from ase.io files and padded batches for training."""

from jaxmat.data._batch import (
    Batch,
    Labels,
    batch_budget,
    build_graphs,
    epoch_batches,
    epoch_groups,
    fitting_budget,
    make_batch,
    pack,
    pad_budget_count,
    pad_budgets,
    split,
)
from jaxmat.data._read import Frame, read_frames, read_structures
from jaxmat.errors import DatasetError

__all__ = [
    "Batch",
    "DatasetError",
    "Frame",
    "Labels",
    "batch_budget",
    "build_graphs",
    "epoch_batches",
    "epoch_groups",
    "fitting_budget",
    "make_batch",
    "pack",
    "pad_budget_count",
    "pad_budgets",
    "read_frames",
    "read_structures",
    "split",
]
