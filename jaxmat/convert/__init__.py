"""Checkpoint converters from other frameworks (need optional extras such as torch)."""

from jaxmat.convert._matgl import convert_matgl, m3gnet_from_matgl
from jaxmat.convert._megnet import megnet_from_matgl
from jaxmat.convert._sevenn import convert_sevenn, sevennet_from_checkpoint
from jaxmat.errors import ConversionError

__all__ = ["ConversionError", "convert_matgl", "convert_sevenn", "m3gnet_from_matgl", "megnet_from_matgl",
           "sevennet_from_checkpoint"]
