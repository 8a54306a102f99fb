"""Model bundles: round trip, corruption and incompatibility are detected; no torch needed."""

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


def test_every_committed_bundle_loads():
    """The shipped and the committed experiment bundles verify (format 2, hashes) without a warning."""
    import warnings
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    bundles = sorted(root.glob("jaxmat/pretrained/*/config.json")) + sorted(root.glob("experiments/**/best_model/config.json"))
    assert len(bundles) >= 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for cfg in bundles:
            assert load_model(cfg.parent).params is not None, cfg


def test_models_of_large_atoms_initialise():
    """Parameter shapes come from a dimer of the first element; Mo (covalent radius 1.54 A) must not
    trip the structure checks there."""
    from jaxmat.models import fresh_params

    hyper = {"element_types": ["Mo", "Cs"], "units": 8, "dim_node": 8, "dim_edge": 8, "nblocks": 1,
             "readout_features": [8, 1]}
    assert fresh_params("M3GNet", hyper)["energy_scale"]["element_refs"].shape == (2,)

