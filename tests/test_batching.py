"""Padding budgets of training batches (jaxmat.data.pad_budgets) and the closed-form activations the
training step differentiates through (jaxmat.nn._activations)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import SHARED
from jaxmat.data import (build_graphs, epoch_groups, fitting_budget, make_batch, pad_budget_count, pad_budgets,
                         read_frames)
from jaxmat.errors import DatasetError
from jaxmat.graph import graph_sizes
from jaxmat.nn._activations import sigmoid, silu
from jaxmat.potential import energy_forces_stress

MLEARN_SI = SHARED / "data" / "mlearn" / "Si_train.extxyz"


@pytest.mark.parametrize("ours, ref", [(silu, jax.nn.silu), (sigmoid, jax.nn.sigmoid)])
def test_activation_derivatives_match_autodiff(ours, ref):
    """Values and derivatives up to the third order equal autodiff of jax.nn's (float64)."""
    with jax.enable_x64(True):
        x = jnp.linspace(-30.0, 30.0, 241)
        f, g = ours, ref
        for order in range(4):
            np.testing.assert_allclose(jax.jit(jax.vmap(f))(x), jax.jit(jax.vmap(g))(x), rtol=1e-12, atol=1e-14,
                                       err_msg=f"order {order}")
            f, g = jax.grad(f), jax.grad(g)
        # reverse over reverse with a non-trivial outer loss, as training through the forces does
        loss = lambda act: lambda x: jnp.sum(jax.grad(lambda y: jnp.sum(act(y) * jnp.sin(y)))(x) ** 2)  # noqa: E731
        np.testing.assert_allclose(jax.jit(jax.grad(loss(ours)))(x), jax.jit(jax.grad(loss(ref)))(x), rtol=1e-10,
                                   atol=1e-12)


def test_pad_budget_count():
    assert [pad_budget_count(s) for s in (0, 10, 999, 1000, 3999, 4000, 8000, 10**6)] == [1, 1, 1, 2, 2, 3, 4, 4]


@pytest.fixture(scope="module")
def si_graphs(model):
    if not MLEARN_SI.is_file():
        pytest.skip(f"needs {MLEARN_SI} (../shared/data)")
    frames = read_frames(MLEARN_SI)[::3]  # 72 frames: 12 to 96 atoms
    return frames, build_graphs(frames, model)


def test_pad_budgets_cover_every_batch_and_cut_padding(si_graphs):
    frames, graphs = si_graphs
    one = pad_budgets(graphs, 4, 1)
    four = pad_budgets(graphs, 4, 4)
    assert len(one) == 1 and four[-1] == one[0] and 1 < len(four) <= 4
    assert four == pad_budgets(graphs, 4, 4)  # deterministic: a resumed run pads the same way
    costs = [b.n_edge for b in four]
    assert costs == sorted(costs)
    padded = 0
    for epoch in range(5):
        groups = epoch_groups(graphs, four, 0, epoch)
        assert groups == epoch_groups(graphs, one[0], 0, epoch)  # the budgets never change the batches
        for idx in groups:
            b = fitting_budget(idx, graphs, four)
            used = np.sum([tuple(graph_sizes(graphs[i]))[:3] for i in idx], axis=0)
            assert np.all(used < np.array(b[:3])) and len(idx) < b.n_graph
            assert all(not (np.all(used < np.array(c[:3]))) for c in four[: four.index(b)])  # the cheapest that fits
            padded += b.n_edge
    assert padded < len([g for e in range(5) for g in epoch_groups(graphs, one[0], 0, e)]) * one[0].n_edge


def test_bucketed_batch_gives_the_same_predictions(si_graphs, model):
    """A batch padded to a smaller budget predicts the same energies and forces."""
    frames, graphs = si_graphs
    small_ones = [k for k, f in enumerate(frames) if len(f.atoms) <= 24]
    frames, graphs = [frames[k] for k in small_ones], [graphs[k] for k in small_ones]
    budgets = pad_budgets(graphs, 2, 3)
    idx = min(epoch_groups(graphs, budgets, 0, 0), key=lambda i: fitting_budget(i, graphs, budgets).n_edge)
    small, big = make_batch(idx, frames, graphs, budgets), make_batch(idx, frames, graphs, budgets[-1])
    assert small.graph.graph.senders.shape[0] < big.graph.graph.senders.shape[0]
    efs = jax.jit(lambda p, g: energy_forces_stress(model.apply, p, g, compute_stress=False))
    out = [efs(model.params, b.graph) for b in (small, big)]
    n, g = len(idx), sum(len(frames[i].atoms) for i in idx)
    np.testing.assert_allclose(out[0]["energy"][:n], out[1]["energy"][:n], rtol=1e-6)
    np.testing.assert_allclose(out[0]["forces"][:g], out[1]["forces"][:g], atol=2e-5)
    np.testing.assert_array_equal(small.labels.energy[:n], big.labels.energy[:n])


def test_batch_over_every_budget_is_refused(si_graphs):
    frames, graphs = si_graphs
    budgets = pad_budgets(graphs, 2, 3)
    with pytest.raises(DatasetError, match="exceed the batch budget"):
        fitting_budget(list(range(6)), graphs, budgets)
