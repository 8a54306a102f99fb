"""Microstructures: a JAX Cahn-Hilliard solver, effective conductivity (finite volumes + CG) with
Hashin-Shtrikman bounds, a cached generated image dataset, and CNN heads for 2D fields."""

from jaxmat.microstructure._cahn_hilliard import evolve, free_energy, initial_field
from jaxmat.microstructure._cnn import CNN, ConvBlock
from jaxmat.microstructure._conductivity import conductivity_along, effective_conductivity, hashin_shtrikman_2d
from jaxmat.microstructure._dataset import Microstructures, generate, load_or_generate

__all__ = ["CNN", "ConvBlock", "Microstructures", "conductivity_along", "effective_conductivity", "evolve",
           "free_energy", "generate", "hashin_shtrikman_2d", "initial_field", "load_or_generate"]
