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
from jaxmat.composition._formula import fractions, parse_formula
from jaxmat.composition._attention import ElementAttention
from jaxmat.composition._models import (
    ARCHITECTURES,
    BRNet,
    ElemNetMLP,
    IRNet,
    count_params,
    make_regressor,
    match_budget,
    scaled_widths,
)
from jaxmat.errors import FormulaError

__all__ = [
    "ARCHITECTURES", "BRNet", "ELEMNET_ELEMENTS", "ElementAttention", "ElemNetMLP", "FormulaError", "IRNet",
    "count_params", "element_embedding_table", "element_fractions", "featurize", "fractions", "magpie_descriptors",
    "make_regressor", "match_budget", "parse_formula", "read_element_table", "scaled_widths",
]
