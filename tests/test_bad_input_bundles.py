"""Bad model bundles: every way a bundle can be wrong is a BundleError (or TypeError) naming the file;
a hand-edited hyperparameter is caught by the config hash; weights must be finite floats."""

import hashlib
import json
import warnings

import flax.serialization
import jax
import numpy as np
import pytest

from helpers import TINY
from jaxmat.errors import BundleError
from jaxmat.models import Model, load_model
from jaxmat.models import config_digest, fresh_params, resolved_hyperparameters

HYPER = {**TINY, "element_types": ["O", "Si"]}


@pytest.fixture(scope="module")
def tiny():
    return Model("M3GNet", HYPER, fresh_params("M3GNet", HYPER), {"name": "tiny"})


def _edit_config(change, certify):
    """A change to config.json; ``certify`` re-computes config_sha256 (a tool that writes bundles
    wrongly), otherwise it is a hand edit."""
    def apply(path):
        cfg = json.loads((path / "config.json").read_text())
        change(cfg)
        if certify:
            cfg["config_sha256"] = config_digest(cfg)
        (path / "config.json").write_text(json.dumps(cfg))
    return apply


def _hyper(key, value, certify=True):
    return _edit_config(lambda c: c["hyperparameters"].__setitem__(key, value), certify)


def _set(key, value, certify=True):
    return _edit_config(lambda c: c.__setitem__(key, value), certify)


def _write_params(tree):
    """Replace the weights with ``tree`` and certify them (a writer that saved bad weights)."""
    return lambda path: _write_raw(path, flax.serialization.msgpack_serialize(tree))


def _params_with(tiny, fn):
    host = jax.tree_util.tree_map(np.asarray, tiny.params)
    return fn(host)


def _nan_weights(tiny):
    """The weights with one NaN in the first kernel."""
    done = []

    def poison(path, x):
        if not done and "kernel" in jax.tree_util.keystr(path):
            x = x.copy()
            x.flat[0] = np.nan
            done.append(path)
        return x
    return jax.tree_util.tree_map_with_path(poison, _params_with(tiny, lambda p: p))


def _int_weights(tiny):
    def fn(p):
        p["energy_scale"]["element_refs"] = np.array([1, 2], np.int64)
        return p
    return _params_with(tiny, fn)


CASES = {  # name: (mutation of a saved bundle folder, message regex)
    "hand-edited cutoff": (_hyper("cutoff", 6.0, certify=False), r"config.json was edited after it was saved"),
    "hand-edited element order": (_hyper("element_types", ["Si", "O"], certify=False), "edited after it was saved"),
    "hand-edited family": (_set("model", "MEGNet", certify=False), "edited after it was saved"),
    "weights of another model": (_set("params_sha256", "0" * 64), r"params.msgpack is corrupt"),
    "config not JSON": (lambda p: (p / "config.json").write_bytes(b"\xff\xfe\x00garbage"), "config.json is not valid JSON"),
    "config a list": (lambda p: (p / "config.json").write_text("[1, 2]"), "must hold a JSON object, not list"),
    "wrong format": (_set("format", "matgl"), "format is 'matgl'"),
    "future version": (_set("format_version", 99), "format version 99 is not supported"),
    "version a string": (_set("format_version", "2"), "format version '2' is not supported"),
    "no hyperparameters": (_edit_config(lambda c: c.pop("hyperparameters"), True), "'hyperparameters' must be"),
    "hyperparameters a string": (_set("hyperparameters", "cutoff=5"), "'hyperparameters' must be a JSON object"),
    "metadata a list": (_set("metadata", ["x"]), "'metadata' must be a JSON object"),
    "family a list": (_set("model", ["M3GNet"]), "'model' must be a string"),
    "unknown family": (_set("model", "NoSuchNet"), "unknown model family 'NoSuchNet'"),
    "cutoff a string": (_hyper("cutoff", "five"), r"hyperparameters.cutoff = 'five' \(str\): expected a finite number"),
    "negative cutoff": (_hyper("cutoff", -5.0), r"hyperparameters.cutoff = -5.0 .*> 0"),
    "three-body cutoff beyond cutoff": (_hyper("threebody_cutoff", 6.0), "threebody_cutoff 6.0 A exceeds cutoff 5.0 A"),
    "unknown hyperparameter": (_hyper("dropout", 0.1), r"unknown key\(s\) \['dropout'\]"),
    "unknown element symbol": (_hyper("element_types", ["O", "Xx"]), "distinct chemical symbols"),
    "repeated element": (_hyper("element_types", ["Si", "Si"]), "distinct chemical symbols"),
    "widths that do not fit the weights": (_hyper("units", 32), "has shape"),
    "unknown rbf": (_hyper("rbf_type", "gaussian"), "rbf_type = 'gaussian'"),
    "weights file a folder": (lambda p: ((p / "params.msgpack").unlink(), (p / "params.msgpack").mkdir()),
                              "params.msgpack is not a file"),
    "truncated weights": (lambda p: (p / "params.msgpack").write_bytes((p / "params.msgpack").read_bytes()[:100]),
                          "is corrupt"),
    "garbage weights": (lambda p: _write_raw(p, b"\xc1\xc1\xc1"), "cannot be decoded"),
    "weights a list": (lambda p: _write_raw(p, flax.serialization.msgpack_serialize([1.0, 2.0])),
                       "does not hold a tree of named weights"),
}


def _write_raw(path, blob):
    """New weights file bytes, certified in config.json."""
    (path / "params.msgpack").write_bytes(blob)
    cfg = json.loads((path / "config.json").read_text())
    cfg["params_sha256"] = hashlib.sha256(blob).hexdigest()
    cfg["config_sha256"] = config_digest(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_bundles(tmp_path, tiny, case):
    mutate, match = CASES[case]
    path = tiny.save(tmp_path / "m")
    mutate(path)
    with pytest.raises(BundleError, match=match) as err:
        load_model(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("which, match", [("nan", r"weight .*kernel.* has 1 non-finite value"),
                                          ("int", r"element_refs.* has dtype int64; weights must be floating point")])
def test_bad_weights(tmp_path, tiny, which, match):
    path = tiny.save(tmp_path / "m")
    tree = _nan_weights(tiny) if which == "nan" else _int_weights(tiny)
    _write_params(tree)(path)
    with pytest.raises(BundleError, match=match):
        load_model(path)
    if which == "nan":  # and such weights are never written in the first place
        with pytest.raises(BundleError, match="non-finite"):
            tiny.with_params(tree).save(tmp_path / "nan")
        assert not (tmp_path / "nan").exists()


@pytest.mark.parametrize("arg", [None, 3.5, ["M3GNet-MP-2021.2.8-PES"], b"M3GNet"])
def test_load_model_wrong_types(arg):
    with pytest.raises(TypeError, match="load_model expects a pretrained model name, a bundle folder path"):
        load_model(arg)


def test_saving_over_a_file(tmp_path, tiny):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(BundleError, match="it is a file, and a bundle is a folder"):
        tiny.save(tmp_path / "taken")


def test_missing_bundles(tmp_path):
    with pytest.raises(BundleError, match="empty name"):
        load_model("")
    with pytest.raises(BundleError, match="no model bundle at .*does-not-exist.*pretrained models: M3GNet"):
        load_model(tmp_path / "does-not-exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="config.json is missing"):
        load_model(tmp_path / "empty")


def test_metadata_may_be_edited_and_format_1_still_loads(tmp_path, tiny):
    path = tiny.save(tmp_path / "m")
    _edit_config(lambda c: c["metadata"].update(name="renamed", note="edited by hand"), certify=False)(path)
    assert load_model(path).metadata["note"] == "edited by hand"
    _edit_config(lambda c: (c.pop("config_sha256"), c.update(format_version=1)), certify=False)(path)
    with pytest.warns(UserWarning, match="format 1 certifies the weights but not the hyperparameters"):
        old = load_model(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load_model(old.save(tmp_path / "resaved"))
    assert again.hyperparameters == resolved_hyperparameters("M3GNet", tiny.hyperparameters)  # defaults written out


@pytest.mark.parametrize("value, match", [(None, None), (0.0, "forces = 0.0: expected a finite number > 0, or null"),
                                          ("1.2", "forces = '1.2'"), (True, "forces = True")])
def test_ensemble_calibration_scales_in_a_bundle(tmp_path, tiny, value, match):
    """A scale is a finite number > 0 or null: not calibrated (the raw members' std), never a made-up 1."""
    from jaxmat.models import stack_members

    second = tiny.with_params(fresh_params("M3GNet", HYPER, seed=1))
    ens = stack_members([tiny, second]).with_calibration({"energy": 1.5, "forces": 2.0, "stress": None, "method": "nll"})
    path = ens.save(tmp_path / "ens")
    saved = json.loads((path / "config.json").read_text())["ensemble"]["calibration"]
    assert saved == {"energy": 1.5, "forces": 2.0, "stress": None, "method": "nll"}  # null in the bundle
    _edit_config(lambda c: c["ensemble"]["calibration"].__setitem__("forces", value), certify=True)(path)
    if match is not None:
        with pytest.raises(BundleError, match=match):
            load_model(path)
        return
    loaded = load_model(path)
    assert [loaded.is_calibrated(q) for q in ("energy", "forces", "stress")] == [True, False, False]
    assert (loaded.spread_scale("energy"), loaded.spread_scale("forces")) == (1.5, 1.0)
