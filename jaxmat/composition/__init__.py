"""Composition -> property: formula parsing, featurisers, BRNet/iBRNet and baselines, training."""

from jaxmat.composition._features import (
    ELEMNET_ELEMENTS,
    element_fractions,
    featurize,
    magpie_descriptors,
    read_element_table,
)
from jaxmat.arrays import (
    Callback,
    FitConfig,
    FitResult,
    early_stopping,
    fit,
    reduce_on_plateau,
    ridge_fit,
    warmup,
)
from jaxmat.composition._formula import FormulaError, fractions, parse_formula
from jaxmat.composition._models import (
    ARCHITECTURES,
    BRNet,
    ElemNetMLP,
    IRNet,
    count_params,
    make_regressor,
    scaled_widths,
)

__all__ = [
    "ARCHITECTURES", "BRNet", "Callback", "ELEMNET_ELEMENTS", "ElemNetMLP", "FitConfig", "FitResult",
    "FormulaError", "IRNet", "count_params", "early_stopping", "element_fractions", "featurize", "fit",
    "fractions", "magpie_descriptors", "make_regressor", "parse_formula", "read_element_table",
    "reduce_on_plateau", "ridge_fit", "scaled_widths", "warmup",
]
