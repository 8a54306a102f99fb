"""Growing a trained M3GNet (``max_l``, ``nblocks``) keeps what it computes; then it trains."""

import jax
import numpy as np
import pytest
from ase.build import bulk

from jaxmat.calculators import JaxmatCalculator
from jaxmat.models import grow_model


def _results(model, atoms):
    a = atoms.copy()
    a.calc = JaxmatCalculator(model=model, dtype="float64")
    return a.get_potential_energy(), a.get_forces(), a.get_stress()


@pytest.mark.parametrize("changes", [pytest.param({"max_l": 7}, marks=pytest.mark.slow), pytest.param({"nblocks": 5}, marks=pytest.mark.slow),
                                     pytest.param({"max_l": 5, "nblocks": 4}, marks=pytest.mark.slow)])
def test_grown_model_computes_the_same(model, reference_frames, changes):
    grown = grow_model(model, **changes)
    assert grown.metadata["grown_from"] == {k: 3 for k in changes}
    assert all(grown.hyperparameters[k] == v for k, v in changes.items())
    if "max_l" in changes:
        kernel = np.asarray(grown.params["edge_embedding"]["kernel"])
        assert kernel.shape[0] == 3 * changes["max_l"] and np.all(kernel[9:] == 0)  # new bond-basis rows start at zero
    if "nblocks" in changes:  # a new block: random weights, but node-update weights zero
        assert np.all(np.asarray(grown.params["conv_3_node_weight"]["kernel"]) == 0)
        assert np.abs(np.asarray(grown.params["conv_3_node"]["layers_0_kernel"])).max() > 0
    mo = bulk("Mo", "bcc", 3.16, cubic=True).repeat((2, 1, 1))
    mo.rattle(0.1, seed=1)
    for atoms in [mo] + list(reference_frames.values())[:1]:
        e0, f0, s0 = _results(model, atoms)
        e1, f1, s1 = _results(grown, atoms)
        assert e1 == pytest.approx(e0, abs=1e-9)
        np.testing.assert_allclose(f1, f0, atol=1e-9)
        np.testing.assert_allclose(s1, s0, atol=1e-11)


@pytest.mark.slow  # ~25 s each on 2 cores: outside the 15-min default suite
def test_grown_channels_receive_gradient(model):
    """The zero-initialised l >= 3 weights are not stuck: the energy has a gradient with respect to them."""
    from jaxmat.data import Frame, batch_budget, build_graphs, make_batch

    grown = grow_model(model, max_l=5)
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.rattle(0.05, seed=0)
    frames = [Frame(atoms, None, None, None, "memory:0")]
    graphs = build_graphs(frames, grown)
    batch = make_batch([0], frames, graphs, batch_budget(graphs, 1), "float32")
    grad = jax.grad(lambda p: grown.apply(p, batch.graph).sum())(grown.params)
    g = np.asarray(grad["three_body_0_bond"]["layers_0_kernel"])
    assert np.abs(g[9:]).max() > 0  # rows of the new l = 3, 4 three-body channels
    assert np.abs(np.asarray(grad["edge_embedding"]["kernel"])[9:]).max() > 0


@pytest.mark.slow  # ~25 s each on 2 cores: outside the 15-min default suite
def test_new_blocks_receive_gradient_and_depend_on_the_seed(model):
    """An appended block is not stuck at zero: its node-update weights have a gradient at once."""
    from jaxmat.data import Frame, batch_budget, build_graphs, make_batch

    grown = grow_model(model, nblocks=4, seed=3)
    other = grow_model(model, nblocks=4, seed=4)
    k = lambda m: np.asarray(m.params["conv_3_edge"]["layers_0_kernel"])  # noqa: E731
    assert not np.array_equal(k(grown), k(other))
    np.testing.assert_array_equal(k(grown), k(grow_model(model, nblocks=4, seed=3)))
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.rattle(0.05, seed=0)
    frames = [Frame(atoms, None, None, None, "memory:0")]
    graphs = build_graphs(frames, grown)
    batch = make_batch([0], frames, graphs, batch_budget(graphs, 1), "float32")
    grad = jax.grad(lambda p: grown.apply(p, batch.graph).sum())(grown.params)
    assert np.abs(np.asarray(grad["conv_3_node_weight"]["kernel"])).max() > 0


def test_only_growth_is_allowed(model):
    with pytest.raises(ValueError, match="can only grow"):
        grow_model(model, max_l=2)
    with pytest.raises(ValueError, match="cannot change"):
        grow_model(model, max_n=4)  # would reorder the l-major basis columns
    with pytest.raises(ValueError, match="cannot change"):
        grow_model(model, units=128)
    with pytest.raises(ValueError, match="can only grow"):
        grow_model(model, nblocks=2)


def test_finetune_config_grows_the_pretrained_model(tmp_path):
    """``model.init_from`` + ``hyperparameters`` grows the bundle; any other change is an error."""
    from jaxmat.train import config_from_dict
    from jaxmat.train._setup import make_model

    for hyper, expect in (({"max_l": 7}, (7, 3)), ({"nblocks": 4}, (3, 4)), ({}, (3, 3))):
        cfg = config_from_dict({"data": {"train": "x.extxyz"},
                                "model": {"init_from": "M3GNet-MP-2021.2.8-PES", "hyperparameters": hyper}})
        h = make_model(cfg.model, cfg.run, [], "atoms").hyperparameters
        assert (h["max_l"], h["nblocks"]) == expect
    cfg = config_from_dict({"data": {"train": "x.extxyz"},
                            "model": {"init_from": "M3GNet-MP-2021.2.8-PES", "hyperparameters": {"units": 128}}})
    with pytest.raises(ValueError, match="cannot change"):
        make_model(cfg.model, cfg.run, [], "atoms")
