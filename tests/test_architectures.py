"""The interaction blocks ablations swap in (equivariant e3nn block, three-body off) pass the same
physics checks as the pretrained M3GNet, with random weights; the e3nn block is O(3)-equivariant."""

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from jaxmat import testing
from jaxmat.calculators import JaxmatCalculator
from jaxmat.graph import atoms_to_graph
from jaxmat.models import Model
from jaxmat.nn import EquivariantInteraction
from jaxmat.train import default_hyperparameters

ELEMENTS = ["O", "Na", "Si", "Cl"]


def unfitted_model(interaction: str) -> Model:
    """A small M3GNet with ``interaction`` blocks and no parameters yet."""
    hyper = {**default_hyperparameters("M3GNet"), "element_types": ELEMENTS, "interaction": interaction,
             "nblocks": 2, "dim_node": 16, "dim_edge": 16, "units": 16, "readout_features": [16, 1]}
    return Model("M3GNet", hyper, None)


def random_model(interaction: str, seed: int = 0) -> Model:
    model = unfitted_model(interaction)
    g = atoms_to_graph(bulk("Si", "diamond", 5.43), model.cutoff, model.three_body_cutoff)
    params = model.init_params(jax.tree_util.tree_map(jnp.asarray, g), seed)
    params = {**params, "energy_scale": {**params["energy_scale"], "scale": jnp.asarray(50.0)}}
    return model.with_params(params)


@pytest.fixture(scope="module", params=["equivariant", "two_body"])
def variant(request):
    model = random_model(request.param)
    return request.param, model, JaxmatCalculator(model=model, dtype="float64")


@pytest.fixture
def nacl_si():
    a = bulk("NaCl", "rocksalt", 5.64, cubic=True)
    a.numbers[:2] = 14  # a mixed, low-symmetry cell
    a.rattle(0.08, seed=4)
    return a


def test_forces_and_stress_match_finite_differences(variant, nacl_si):
    _, _, calc = variant
    testing.assert_forces_match_finite_differences(calc, nacl_si, atol=1e-6)
    testing.assert_stress_matches_finite_differences(calc, nacl_si, atol=1e-7)


def test_invariances_including_inversion(variant, nacl_si):
    _, _, calc = variant
    testing.assert_invariant(calc, nacl_si, np.random.default_rng(1), atol_e=1e-8 * len(nacl_si), atol_f=1e-8)
    inverted = nacl_si.copy()  # a lattice is centrosymmetric: invert the atoms, keep the cell
    inverted.positions = -nacl_si.positions
    a = nacl_si.copy()
    a.calc, inverted.calc = calc, calc
    assert inverted.get_potential_energy() == pytest.approx(a.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(inverted.get_forces(), -a.get_forces(), atol=1e-9)


def test_energy_continuous_at_cutoff(variant):
    name, model, calc = variant
    jumps = testing.energy_across_cutoff(calc, "SiNaCl", model.cutoff, deltas=(1e-3, 1e-5, 1e-7))
    assert jumps[-1] < 1e-7, f"{name}: energy jumps {jumps} across the cutoff"


def test_supercell_extensive_and_float32(variant, nacl_si):
    name, model, calc = variant
    testing.assert_extensive(calc, nacl_si, (1, 2, 1), rtol=1e-9)
    a, b = nacl_si.copy(), nacl_si.copy()
    a.calc, b.calc = calc, JaxmatCalculator(model=model, dtype="float32")
    assert abs(a.get_potential_energy() - b.get_potential_energy()) / len(a) < 1e-4
    assert np.abs(a.get_forces() - b.get_forces()).max() < 1e-3


def test_two_body_variant_builds_no_triplets():
    assert unfitted_model("two_body").three_body_cutoff is None
    assert unfitted_model("three_body").three_body_cutoff == 4.0


@pytest.mark.parametrize("improper", [pytest.param(False, marks=pytest.mark.slow), True])
def test_equivariant_block_is_o3_equivariant(improper):
    rng = np.random.default_rng(0)
    n, n_edge = 6, 20
    irreps_in = e3nn.Irreps("4x0e + 3x1o + 2x2e + 1x1e")
    h = e3nn.IrrepsArray(irreps_in, jnp.asarray(rng.normal(size=(n, irreps_in.dim))))
    send, recv = rng.integers(0, n, n_edge), rng.integers(0, n, n_edge)
    vec = jnp.asarray(rng.normal(size=(n_edge, 3)))
    radial = jnp.asarray(rng.normal(size=(n_edge, 5)))
    envelope = jnp.asarray(rng.uniform(size=n_edge))
    mask = jnp.asarray(np.arange(n_edge) < 17)  # three padding edges
    block = EquivariantInteraction("8x0e + 4x1o + 2x2e + 2x1e + 1x0o")
    params = jax.jit(block.init)(jax.random.PRNGKey(0), h, vec, radial, envelope, send, recv, mask)
    f = jax.jit(lambda h_, v_: block.apply(params, h_, v_, radial, envelope, send, recv, mask))  # one compilation, not op by op
    R = testing.random_rotation(rng) * (-1.0 if improper else 1.0)
    out = f(h, vec)
    rotated = f(h.transform_by_matrix(R), vec @ R.T)
    np.testing.assert_allclose(rotated.array, out.transform_by_matrix(R).array, atol=1e-5)
    assert not np.allclose(out.filter(drop="0e").array, 0.0)  # non-trivial vector/tensor outputs
