"""Shared pieces of the matgl converters: the error type, safe state-dict loading, defaults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from jaxmat.errors import ConversionError

#: matgl's DEFAULT_ELEMENTS (used when a model.json names none): Z < 95 without Po, At, Rn, Fr, Ra.
MATGL_DEFAULT_ELEMENTS = tuple(s for s in chemical_symbols[1:95] if s not in ("Po", "At", "Rn", "Fr", "Ra"))


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Tensors of a torch state dict, read with ``weights_only=True`` (no arbitrary unpickling)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConversionError("converting matgl checkpoints needs torch: pip install 'jaxmat[convert]'") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        raise ConversionError(f"{path}: not a loadable torch state dict ({type(err).__name__}: {err})") from None
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}
