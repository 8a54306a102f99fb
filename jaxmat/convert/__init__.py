"""Checkpoint converters from other frameworks (need optional extras such as torch)."""

from jaxmat.convert._matgl import ConversionError, convert_matgl, m3gnet_from_matgl

__all__ = ["ConversionError", "convert_matgl", "m3gnet_from_matgl"]
