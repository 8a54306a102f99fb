"""Shallow ensembles in one pass (``jaxmat.models._shallow``): one forward through the shared body,
the K heads' forces and stress from one batched backward pass, equal in float64 to K separate
``energy_forces_stress`` calls."""

from __future__ import annotations

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from helpers import TINY
from jaxmat.graph import atoms_to_graph, batch_graphs, bucket_sizes, cast_floats, graph_sizes, pad_graph
from jaxmat.models import Model, stack_members
from jaxmat.models import fresh_params
from jaxmat.potential import energy_forces_stress

K = 3


@pytest.fixture(scope="module")
def tiny_heads():
    """K tiny M3GNets (Si, O) sharing one random body, with differently perturbed readouts and
    first conv block (for the stacked-body case)."""
    hyper = {"element_types": ["O", "Si"], **TINY}
    base = fresh_params("M3GNet", hyper, seed=0)
    models = []
    for k in range(K):
        rng = np.random.default_rng(k)
        jitter = lambda t: jax.tree_util.tree_map(lambda x: np.asarray(x) * (1 + 0.3 * rng.normal(size=np.shape(x))), t)  # noqa: E731
        models.append(Model("M3GNet", hyper, {**base, "readout": jitter(base["readout"])}))
    return models


@pytest.fixture(scope="module")
def batch64():
    """A padded float64 batch (jax arrays) of a rattled periodic SiO2-like cell and a non-periodic molecule."""
    crystal = bulk("Si", "diamond", 5.43, cubic=True)
    crystal.numbers[::4] = 8
    crystal.rattle(0.1, seed=2)
    molecule = ase.Atoms("SiO2", positions=[[0, 0, 0], [1.6, 0, 0], [-0.5, 1.5, 0.2]])
    graphs = [atoms_to_graph(a, 5.0, 4.0) for a in (crystal, molecule)]
    g = batch_graphs(graphs)
    g = pad_graph(g, bucket_sizes(graph_sizes(g), 1.2))
    with jax.enable_x64(True):  # (jnp arrays made outside x64 would be float32)
        return jax.tree_util.tree_map(jnp.asarray, cast_floats(g, "float64"))


@pytest.mark.parametrize("mode", ["vmap", "sequential"])
def test_one_pass_heads_equal_separate_members_in_float64(tiny_heads, batch64, mode):
    ens = stack_members(tiny_heads, kind="shallow")
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), ens.params)
        got = jax.jit(lambda p, g: ens.member_results(p, g, True, mode))(params, batch64)
        single = jax.jit(lambda p, g: energy_forces_stress(tiny_heads[0].apply, p, g, True))  # one compilation
        for k, m in enumerate(tiny_heads):
            ref = single(m.params, batch64)
            for key in ("energy", "energies", "forces", "stress"):
                np.testing.assert_allclose(got[key][k], ref[key], rtol=1e-12, atol=1e-12, err_msg=f"head {k} {key}")
    assert got["forces"].shape == (K,) + ref["forces"].shape and got["stress"].shape == (K,) + ref["stress"].shape
    spread = np.std(np.asarray(got["forces"]), axis=0)
    assert spread.max() > 1e-4  # the heads disagree: the test compares K different force fields


@pytest.mark.slow  # two more compilations (~10 s of CPU)
def test_one_pass_without_stress_and_with_a_stacked_body_group(tiny_heads, batch64):
    """Heads that also own a body group (the body is then batched) and no stress: still exact."""
    models = []
    for k, m in enumerate(tiny_heads):
        conv = jax.tree_util.tree_map(lambda x: np.asarray(x) * (1 + 0.1 * k), m.params["conv_0_node"])
        models.append(m.with_params({**m.params, "conv_0_node": conv}))
    ens = stack_members(models, kind="shallow", stacked=("readout", "conv_0_node"))
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), ens.params)
        got = jax.jit(lambda p, g: ens.member_results(p, g, False, "vmap"))(params, batch64)
        assert "stress" not in got
        single = jax.jit(lambda p, g: energy_forces_stress(models[0].apply, p, g, False))
        for k, m in enumerate(models):
            ref = single(m.params, batch64)
            np.testing.assert_allclose(got["forces"][k], ref["forces"], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(got["energy"][k], ref["energy"], rtol=1e-12, atol=1e-12)
