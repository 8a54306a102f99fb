"""Training of array regressors ((B, ...) -> (B,) Flax models with batch norm/dropout): composition
vectors (BRNet and baselines), images (CNN heads). Optax + composable epoch callbacks; ridge."""

from jaxmat.arrays._callbacks import Callback, early_stopping, patience_spent, reduce_on_plateau, warmup
from jaxmat.arrays._fit import FitConfig, FitResult, fit, ridge_fit, standardize

__all__ = ["Callback", "FitConfig", "FitResult", "early_stopping", "fit", "patience_spent", "reduce_on_plateau",
           "ridge_fit", "standardize", "warmup"]
