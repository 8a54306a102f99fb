"""The pretrained bundles shipped inside the package: their folder, names and the default model.

Imports nothing heavy (no JAX, no Flax), so ``jaxmat list`` and ``import jaxmat`` stay fast;
``jaxmat.models.load_model`` loads a bundle by one of these names.
"""

from __future__ import annotations

from pathlib import Path

#: folder of the shipped bundles (``jaxmat/pretrained/<name>/config.json + params.msgpack``)
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
#: the universal potential every command and calculator uses unless told otherwise
DEFAULT_MODEL = "M3GNet-MP-2021.2.8-PES"


def list_pretrained() -> list[str]:
    """Names of the bundles shipped inside the package."""
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "config.json").is_file())
