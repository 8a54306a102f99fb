"""The shipped bundles are exactly what the converter makes from matgl's files (needs torch and
../shared; skipped otherwise)."""

import jax
import numpy as np
import pytest

import jaxmat
from helpers import SHARED


@pytest.mark.parametrize("name", ["M3GNet-MP-2021.2.8-PES", "MEGNet-MP-2018.6.1-Eform"])
def test_convert_matches_shipped_bundle(tmp_path, name):
    pytest.importorskip("torch", reason="the matgl converter needs torch (pip install 'jaxmat[convert]')")
    src = SHARED / "pretrained" / "matgl" / name
    if not src.is_dir():
        pytest.skip(f"{src} not available (../shared is absent)")
    from jaxmat.convert import convert_matgl

    shipped = jaxmat.load_model(name)
    converted = convert_matgl(src, tmp_path / "bundle")
    assert converted.family == shipped.family
    assert converted.hyperparameters == shipped.hyperparameters
    for a, b in zip(jax.tree_util.tree_leaves(converted.params), jax.tree_util.tree_leaves(shipped.params)):
        np.testing.assert_array_equal(a, b)


def test_converter_rejects_other_architectures(tmp_path):
    from jaxmat.convert import ConversionError, convert_matgl

    (tmp_path / "model.json").write_text('{"@class": "Potential", "kwargs": {"model": {"@class": "CHGNet"}}}')
    (tmp_path / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConversionError, match="CHGNet"):
        convert_matgl(tmp_path, tmp_path / "out")


def test_matgl_default_elements_are_the_m3gnet_ones(model):
    from jaxmat.convert._common import MATGL_DEFAULT_ELEMENTS

    assert MATGL_DEFAULT_ELEMENTS == model.element_types
