"""Training with Optax: configs, losses, element references, checkpoints, the training loop."""

from jaxmat.errors import CheckpointError
from jaxmat.train._checkpoint import load_checkpoint, save_checkpoint
from jaxmat.train._config import TrainConfig, config_from_dict, describe, load_config
from jaxmat.train._evaluate import error_metrics, format_metrics, format_metrics_by_group, metrics_by_group, predict
from jaxmat.train._loss import loss_and_metrics, summarize
from jaxmat.train._refs import fit_element_refs
from jaxmat.train._setup import config_frames, default_hyperparameters
from jaxmat.train._trainer import train_and_evaluate

__all__ = [
    "CheckpointError",
    "TrainConfig",
    "config_from_dict",
    "config_frames",
    "default_hyperparameters",
    "describe",
    "error_metrics",
    "fit_element_refs",
    "format_metrics",
    "format_metrics_by_group",
    "load_checkpoint",
    "load_config",
    "loss_and_metrics",
    "metrics_by_group",
    "predict",
    "save_checkpoint",
    "summarize",
    "train_and_evaluate",
]
