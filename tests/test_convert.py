"""The shipped bundle is exactly what the converter makes from matgl's files (needs torch and
../shared; skipped otherwise)."""

import jax
import numpy as np
import pytest

from conftest import SHARED

SRC = SHARED / "pretrained" / "matgl" / "M3GNet-MP-2021.2.8-PES"


def test_convert_matches_shipped_bundle(tmp_path, model):
    pytest.importorskip("torch", reason="the matgl converter needs torch (pip install 'jaxmat[convert]')")
    if not SRC.is_dir():
        pytest.skip(f"{SRC} not available (../shared is absent)")
    from jaxmat.convert import convert_matgl

    converted = convert_matgl(SRC, tmp_path / "bundle")
    assert converted.hyperparameters == model.hyperparameters
    for a, b in zip(jax.tree_util.tree_leaves(converted.params), jax.tree_util.tree_leaves(model.params)):
        np.testing.assert_array_equal(a, b)
