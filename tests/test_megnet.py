"""MEGNet-MP-2018.6.1-Eform: parity with matgl's reference outputs, invariances, edge cases."""

import ase
import ase.io
import numpy as np
import pytest
from ase.build import bulk

import jaxmat
from jaxmat.models import UnknownElementError
from jaxmat.testing import assert_property_invariant

from helpers import FIXTURES

NAME = "MEGNet-MP-2018.6.1-Eform"


@pytest.fixture(scope="module")
def megnet():
    return jaxmat.load_model(NAME)


@pytest.fixture(scope="module")
def megnet_frames():
    return ase.io.read(FIXTURES / "megnet_eform_dev.extxyz", ":")


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-6), ("float32", 1e-5)])
def test_reference_parity(megnet, megnet_frames, dtype, tol):
    assert len(megnet_frames) == 11
    ref = np.array([f.info["eform_per_atom"] for f in megnet_frames])
    pred = megnet.predict(megnet_frames, dtype=dtype, graphs_per_batch=4)
    worst = np.abs(pred - ref)
    names = [f.info["name"] for f in megnet_frames]
    assert worst.max() <= tol, dict(zip(names, worst.round(9)))


def test_cscl(megnet):
    cscl = bulk("CsCl", "cesiumchloride", a=4.1437)
    assert megnet.predict([cscl], dtype="float64")[0] == pytest.approx(-2.272227, abs=1e-6)


def test_bond_of_exactly_the_cutoff_counts(megnet, megnet_frames):
    # MoS_cubic has 12 bonds of exactly 4.0 A = cutoff; matgl (pymatgen neighbours) includes them
    mos = next(f for f in megnet_frames if f.info["name"] == "MoS_cubic")
    assert megnet.predict([mos], dtype="float64")[0] == pytest.approx(mos.info["eform_per_atom"], abs=1e-6)


def test_isolated_atom_is_finite(megnet):
    # no edges: bond means and the bond Set2Set read out zeros (matgl returns NaN here)
    boxed = ase.Atoms("Cu", cell=[20, 20, 20], pbc=True)
    free = ase.Atoms("Cu")
    out = megnet.predict([boxed, free, bulk("Cu", "fcc", a=3.6)], dtype="float64")
    assert np.all(np.isfinite(out))
    assert out[0] == pytest.approx(out[1], abs=1e-12)
    assert megnet.predict([free], dtype="float64")[0] == pytest.approx(out[1], abs=1e-9)


@pytest.mark.parametrize("name", ["MgO_triclinic", "LiFePO4_olivine", "Cu111_slab_periodic"])
def test_invariances_batch_and_intensive(megnet, megnet_frames, name):
    atoms = next(f for f in megnet_frames if f.info["name"] == name)
    assert_property_invariant(lambda s: megnet.predict(s, dtype="float64"), atoms)


def test_padding_changes_nothing(megnet, megnet_frames):
    small = megnet_frames[3:5]
    a = megnet.predict(small, dtype="float64", graphs_per_batch=2)
    b = megnet.predict(small + megnet_frames[:2], dtype="float64", graphs_per_batch=4)[:2]  # larger buckets
    np.testing.assert_allclose(a, b, atol=1e-10)


def test_batch_size_is_the_deprecated_name_of_graphs_per_batch(megnet, megnet_frames):
    small = megnet_frames[3:5]
    with pytest.warns(DeprecationWarning, match="graphs_per_batch"):
        old = megnet.predict(small, dtype="float64", batch_size=2)
    assert old.tobytes() == megnet.predict(small, dtype="float64", graphs_per_batch=2).tobytes()


def test_unknown_element(megnet):
    with pytest.raises(UnknownElementError, match="Og"):
        megnet.predict([ase.Atoms("Og", cell=[5, 5, 5], pbc=True)])


def test_potential_predict_gives_total_energy(model, reference_frames):
    si = reference_frames["Si2_primitive"]
    assert model.predict([si], dtype="float64")[0] == pytest.approx(si.get_potential_energy(), abs=1e-5)


@pytest.mark.slow  # minutes on 2 cores: outside the default suite (-m slow)
def test_megnet_trains_on_structure_to_scalar_data(tmp_path):
    """From scratch on the 11 labelled structures (target: info["eform_per_atom"]), and fine-tuned
    from the pretrained bundle on a shifted target: the loss falls and the best model predicts."""
    from jaxmat.train import config_from_dict, train_and_evaluate

    frames = ase.io.read(FIXTURES / "megnet_eform_dev.extxyz", ":")
    for f in frames:
        f.info["shifted"] = 1.1 * f.info["eform_per_atom"] + 0.05
    data = str(tmp_path / "eform.extxyz")
    ase.io.write(data, frames)
    base = {"data": {"train": data, "valid": data, "energy_key": "eform_per_atom", "graphs_per_batch": 4},
            "loss": {"kind": "mse"}, "run": {"progress": False, "seed": 0}}
    runs = {"scratch": {"model": {"family": "MEGNet", "hyperparameters": {"nblocks": 2}},
                        "optim": {"epochs": 12, "learning_rate": 3e-3, "warmup_epochs": 0, "ema_decay": 0}},
            "finetune": {"model": {"init_from": NAME},
                         "optim": {"epochs": 4, "learning_rate": 1e-3, "warmup_epochs": 0, "ema_decay": 0}}}
    for name, over in runs.items():
        cfg = config_from_dict({**base, **over})
        if name == "finetune":
            cfg.data.energy_key = "shifted"
        results = train_and_evaluate(cfg, tmp_path / name, log=lambda *_: None)
        rows = [r.split(",") for r in (tmp_path / name / "metrics.csv").read_text().splitlines()[1:]]
        loss = [float(r[3]) for r in rows]
        assert loss[-1] < loss[0], (name, loss)
        best = jaxmat.load_model(tmp_path / name / "best_model")
        assert best.family == "MEGNet" and np.isfinite(results["valid"]["e_mae"])
        pred = best.predict(ase.io.read(data, ":"))
        assert np.all(np.isfinite(pred))
