"""Model bundles: round trip, corruption and incompatibility are detected; no torch needed."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import jaxmat
from jaxmat.models import BundleError, list_pretrained, load_model


def test_default_model_is_shipped():
    assert jaxmat.DEFAULT_MODEL in list_pretrained()
    m = load_model()
    assert m.family == "M3GNet" and len(m.element_types) == 89
    assert "BSD" in m.metadata["license"]


def test_load_needs_no_torch():
    code = "import sys, jaxmat; jaxmat.load_model(); assert 'torch' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_round_trip(tmp_path, model):
    path = model.save(tmp_path / "copy")
    again = load_model(path)
    assert again.hyperparameters == model.hyperparameters
    for a, b in zip(*(jax_leaves(m.params) for m in (model, again))):
        np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def test_corrupt_weights_detected(tmp_path, model):
    path = model.save(tmp_path / "bad")
    blob = bytearray((path / "params.msgpack").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (path / "params.msgpack").write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="corrupt"):
        load_model(path)
    (path / "params.msgpack").write_bytes(bytes(blob[:100]))
    with pytest.raises(BundleError, match="corrupt"):
        load_model(path)
