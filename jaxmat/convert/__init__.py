"""Checkpoint converters from other frameworks (need optional extras such as torch)."""

from jaxmat.convert._matgl import convert_matgl, m3gnet_from_matgl
from jaxmat.convert._megnet import megnet_from_matgl
from jaxmat.errors import ConversionError

__all__ = ["ConversionError", "convert_matgl", "m3gnet_from_matgl", "megnet_from_matgl"]
