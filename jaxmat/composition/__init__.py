"""Composition -> property: formula parsing, featurisers, BRNet/iBRNet, baselines and an attention
model over the elements of a formula (train them with ``jaxmat.arrays.fit``; iBRNet = BRNet + its
callbacks)."""

from jaxmat.composition._features import (
    ELEMNET_ELEMENTS,
    element_embedding_table,
    element_fractions,
    featurize,
    magpie_descriptors,
    read_element_table,
)
from jaxmat.composition._formula import FormulaError, fractions, parse_formula
from jaxmat.composition._attention import ElementAttention
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
    "ARCHITECTURES", "BRNet", "ELEMNET_ELEMENTS", "ElementAttention", "ElemNetMLP", "FormulaError", "IRNet",
    "count_params", "element_embedding_table", "element_fractions", "featurize", "fractions", "magpie_descriptors",
    "make_regressor", "parse_formula", "read_element_table", "scaled_widths",
]
