"""Training with Optax: configs, losses, element references, checkpoints, the training loop; evaluation
and the uncertainty reports of ensembles and LLPR models on labelled frames.

The public face of the package: the command line and sibling packages import from here."""

from jaxmat.errors import CheckpointError
from jaxmat.train._checkpoint import load_checkpoint, save_checkpoint
from jaxmat.train._config import TrainConfig, config_from_dict, describe, load_config
from jaxmat.train._evaluate import (
    error_metrics,
    format_metrics,
    format_metrics_by_group,
    metrics_by_group,
    predict_frames,
)
from jaxmat.train._llpr import fit_llpr, llpr_predict, llpr_report
from jaxmat.train._loss import loss_and_metrics, summarize
from jaxmat.train._per_atom import atom_report, format_atom_report
from jaxmat.train._refs import fit_element_refs
from jaxmat.train._report import interrupted_report
from jaxmat.train._setup import config_frames, default_hyperparameters
from jaxmat.train._trainer import train_and_evaluate
from jaxmat.train._uq import (
    fit_calibration,
    format_report,
    format_scales,
    predict_members,
    uncertainty_plots,
    uncertainty_report,
)

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "atom_report",
    "config_from_dict",
    "config_frames",
    "default_hyperparameters",
    "describe",
    "error_metrics",
    "fit_calibration",
    "fit_element_refs",
    "fit_llpr",
    "format_atom_report",
    "format_metrics",
    "format_metrics_by_group",
    "format_report",
    "format_scales",
    "interrupted_report",
    "llpr_predict",
    "llpr_report",
    "load_checkpoint",
    "load_config",
    "loss_and_metrics",
    "metrics_by_group",
    "predict_frames",
    "predict_members",
    "save_checkpoint",
    "summarize",
    "train_and_evaluate",
    "uncertainty_plots",
    "uncertainty_report",
]
