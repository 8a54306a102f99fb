"""Model families, model bundles and the pretrained registry.

The public face of the package: sibling packages import from here, never from its private modules.
"""

from jaxmat._pretrained import DEFAULT_MODEL, list_pretrained
from jaxmat.errors import BundleError, UnknownElementError
from jaxmat.models._bundle import check_params, check_weights, config_digest, read_bundle, save_bundle
from jaxmat.models._ensemble import Ensemble, stack_members, warn_if_uncalibrated
from jaxmat.models._grow import GROWABLE, grow_model
from jaxmat.models._llpr import (
    LLPRModel,
    default_layer,
    feature_rows,
    isotropic,
    layer_param,
    layer_size,
    llpr_outputs,
    local_sigma,
    with_layer_param,
)
from jaxmat.models._load import load_model
from jaxmat.models._m3gnet import M3GNet
from jaxmat.models._megnet import MEGNet
from jaxmat.models._model import Model, expected_param_shapes, fresh_params
from jaxmat.models._predict import check_batching, host_graph_totals, run_batches, warn_outside_domain
from jaxmat.models._registry import (
    FAMILIES,
    check_hyperparameters,
    default_hyperparameters,
    resolved_hyperparameters,
)
from jaxmat.models._sevennet import SevenNet

__all__ = [
    "BundleError",
    "DEFAULT_MODEL",
    "Ensemble",
    "FAMILIES",
    "GROWABLE",
    "LLPRModel",
    "M3GNet",
    "MEGNet",
    "Model",
    "SevenNet",
    "UnknownElementError",
    "check_batching",
    "check_hyperparameters",
    "check_params",
    "check_weights",
    "config_digest",
    "default_hyperparameters",
    "default_layer",
    "expected_param_shapes",
    "feature_rows",
    "fresh_params",
    "grow_model",
    "host_graph_totals",
    "isotropic",
    "layer_param",
    "layer_size",
    "list_pretrained",
    "llpr_outputs",
    "load_model",
    "local_sigma",
    "read_bundle",
    "resolved_hyperparameters",
    "run_batches",
    "save_bundle",
    "stack_members",
    "warn_if_uncalibrated",
    "warn_outside_domain",
    "with_layer_param",
]
