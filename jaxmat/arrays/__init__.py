"""Training of array regressors ((B, ...) -> (B,) Flax models with batch norm/dropout): composition
vectors (BRNet and baselines), images (CNN heads). Optax + composable epoch callbacks; ridge."""

from jaxmat.arrays._fit import (
    Callback,
    FitConfig,
    FitResult,
    early_stopping,
    fit,
    reduce_on_plateau,
    ridge_fit,
    standardize,
    warmup,
)

__all__ = ["Callback", "FitConfig", "FitResult", "early_stopping", "fit", "reduce_on_plateau", "ridge_fit",
           "standardize", "warmup"]
