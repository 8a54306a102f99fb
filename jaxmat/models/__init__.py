"""Model families, model bundles and the pretrained registry."""

from jaxmat.errors import BundleError, UnknownElementError
from jaxmat.models._bundle import read_bundle, save_bundle
from jaxmat.models._ensemble import Ensemble, stack_members
from jaxmat.models._grow import GROWABLE, grow_model
from jaxmat.models._m3gnet import M3GNet
from jaxmat.models._model import (
    DEFAULT_MODEL,
    FAMILIES,
    Model,
    list_pretrained,
    load_model,
)

__all__ = [
    "BundleError",
    "DEFAULT_MODEL",
    "Ensemble",
    "FAMILIES",
    "GROWABLE",
    "M3GNet",
    "Model",
    "UnknownElementError",
    "grow_model",
    "list_pretrained",
    "load_model",
    "read_bundle",
    "save_bundle",
    "stack_members",
]
