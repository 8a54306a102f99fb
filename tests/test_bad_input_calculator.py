"""Bad input to the ASE calculator and the graph builder: a clear error, never a silent wrong number.
Plus the numbers that used to be silently wrong: float32 totals of large cells and coordinates far
from the origin."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError

from jaxmat.calculators import JaxmatCalculator
from jaxmat.errors import ConfigError, StructureError, UnknownElementError
from jaxmat.graph import StructureChecks, atoms_to_graph
from jaxmat.potential import graph_totals


def _si(**kw):
    return bulk("Si", "diamond", 5.43, **kw)


def _with(atoms, fn):
    fn(atoms)
    return atoms


def _positions(k, value):
    return lambda a: a.positions.__setitem__((1, k), value)


# (structure, checks or None, exception, message regex)
STRUCTURES = {
    "unknown element Og": (Atoms("SiOg", positions=[[0, 0, 0], [2, 0, 0]]), None, UnknownElementError, "Og"),
    "element outside the 89 (Po)": (Atoms("Po2", positions=[[0, 0, 0], [2.5, 0, 0]]), None, UnknownElementError, "Po"),
    "zero cell": (Atoms("Si2", positions=[[0, 0, 0], [1.3, 1.3, 1.3]], cell=np.zeros((3, 3)), pbc=True),
                  None, StructureError, "volume"),
    "flat cell": (Atoms("Si2", positions=[[0, 0, 0], [1.3, 1.3, 1.3]], cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True),
                  None, StructureError, "volume"),
    "left-handed cell": (Atoms("Si2", positions=[[0, 0, 0], [1.3, 1.3, 1.3]], cell=np.diag([3, 3, -3]), pbc=True),
                         None, StructureError, "volume"),
    "degenerate slab vectors": (Atoms("Si", cell=[[3, 0, 0], [6, 0, 0], [0, 0, 0]], pbc=[True, True, False]),
                                None, StructureError, "degenerate"),
    "NaN position": (_with(_si(), _positions(2, np.nan)), None, StructureError, "not finite"),
    "inf position": (_with(_si(), _positions(0, np.inf)), None, StructureError, "not finite"),
    "NaN cell": (_with(_si(), lambda a: a.cell.__setitem__((0, 0), np.nan)), None, StructureError, "NaN or inf"),
    "empty": (Atoms(), None, StructureError, "no atoms"),
    "duplicated atom": (_with(_si(cubic=True), lambda a: a.positions.__setitem__(3, a.positions[5])),
                        None, StructureError, r"atoms \d+ \(Si\) and \d+ \(Si\) overlap: 0 A apart"),
    "overlap through a periodic image": (
        _with(_si(cubic=True), lambda a: a.positions.__setitem__(0, a.positions[1] + a.cell[0])),
        None, StructureError, "overlap"),
    "collapsed Si (a = 1.7 A)": (bulk("Si", "diamond", 1.7), None, StructureError,
                                 r"0.736 A apart, closer than 0.5 x the sum of their covalent radii"),
    "lattice in nm (Cu a = 0.36)": (bulk("Cu", "fcc", 0.36), None, StructureError, "neighbours per atom"),
    "one atom in a 1 A cell": (Atoms("H", cell=np.eye(3), pbc=True), None, StructureError,
                               r"514 neighbours within the cutoff \(limit max_neighbors=500\)"),
    "one atom in a 1e-6 A^3 cell": (Atoms("H", cell=np.eye(3) * 0.01, pbc=True), None, StructureError,
                                    "5.24e.08 neighbours per atom"),
    "atom on its own image (thin cell)": (Atoms("Cu", cell=np.diag([2.5, 2.5, 0.8]), pbc=True), None, StructureError,
                                          "atom 0 .Cu. and its own periodic image overlap"),
    "cell in metres (Si a = 5.43e-10)": (bulk("Si", "diamond", 5.43e-10), None, StructureError,
                                         r"volume 4e-29 A\^3: far too small for atoms \(lengths in m or nm"),
    "partially occupied sites (CIF)": (_with(bulk("Ni", "fcc", 3.56, cubic=True), lambda a: a.info.update(
        occupancy={"0": {"Fe": 0.5, "Ni": 0.5}})), None, StructureError, r"partially occupied sites \(site 0"),
    "vacancy site (CIF occupancy 0.25)": (_with(bulk("Cu", "fcc", 3.6, cubic=True), lambda a: a.info.update(
        occupancy={"0": {"Cu": 0.25}})), None, StructureError, "partially occupied"),
    "triplet cap": (_si(cubic=True), StructureChecks(max_triplets=1000), StructureError,
                    "1,920 three-body triplets, more than max_triplets=1,000"),
    "neighbour cap": (_si(cubic=True), StructureChecks(max_neighbors=20), StructureError, "limit max_neighbors=20"),
}


@pytest.mark.parametrize("case", list(STRUCTURES))
def test_bad_structures(model, case):
    atoms, checks, error, match = STRUCTURES[case]
    atoms = atoms.copy()
    atoms.calc = JaxmatCalculator(model=model, checks=checks or StructureChecks())
    with pytest.raises(error, match=match):
        atoms.get_potential_energy()


def test_structure_checks_are_configurable(model):
    """A factor of 0 switches the closest-approach check off; the caps are the user's to raise."""
    squeezed = bulk("Si", "diamond", 4.0)  # 0.78 x the covalent sum: allowed by default, a real high-pressure cell
    g = atoms_to_graph(squeezed, model.cutoff, model.three_body_cutoff)
    assert g.graph.n_edge[0] > 0
    with pytest.raises(StructureError, match="overlap"):
        atoms_to_graph(squeezed, model.cutoff, model.three_body_cutoff, StructureChecks(min_distance_factor=0.9))
    atoms_to_graph(bulk("Si", "diamond", 2.5), model.cutoff, None, StructureChecks(min_distance_factor=0))


SETTINGS = [
    (dict(dtype="float16"), ConfigError, r"JaxmatCalculator.dtype = 'float16' \(str\): expected one of"),
    (dict(skin=-1.0), ConfigError, r"skin = -1.0 \(float\): expected >= 0"),
    (dict(growth=1.0), ConfigError, "growth = 1.0 .*> 1"),
    (dict(headroom="5%"), ConfigError, "headroom = '5%' .*finite number"),
    (dict(checks={"max_neighbors": 10}), TypeError, "StructureChecks"),
    (dict(model=None), TypeError, "load_model expects"),
    (dict(model="MEGNet-MP-2018.6.1-Eform"), ConfigError, "expected a potential .* use model.predict"),
]


@pytest.mark.parametrize("kwargs, error, match", SETTINGS, ids=[str(k) for k, *_ in SETTINGS])
def test_bad_calculator_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        JaxmatCalculator(**kwargs)


@pytest.mark.parametrize("kwargs, match", [(dict(min_distance_factor=-0.1), "min_distance_factor = -0.1"),
                                           (dict(max_neighbors=0), "max_neighbors = 0"),
                                           (dict(max_triplets=2.5e6), r"max_triplets = 2500000.0 \(float\): expected an integer")])
def test_bad_structure_checks(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        StructureChecks(**kwargs)


def test_wire_in_a_huge_periodic_box(calc32):
    """A periodic direction whose images lie beyond the cutoff is searched as open: the same bonds
    (vesin 0.6 crashed the process on such cells) and the same numbers as the open structure."""
    wire = Atoms("Si2", positions=[[1000, 1000, 0], [1000, 1000, 2.35]], cell=[2000, 2000, 4.7], pbc=True)
    open_ = wire.copy()
    open_.pbc = [False, False, True]
    energies = []
    for a in (wire, open_):
        a.calc = calc32
        energies.append(a.get_potential_energy())
    assert np.isfinite(energies[0]) and energies[0] == energies[1]


@pytest.mark.parametrize("structures, error, match", [
    (["Si"], TypeError, "item 0 is a str"), (bulk("Si"), TypeError, r"wrap a single structure: predict\(\[atoms\]\)"),
    ([bulk("Si"), Atoms("Si2", positions=[[0, 0, 0], [0.5, 0, 0]])], StructureError, r"structure 1 \(Si2\): atoms"),
    ([bulk("Si"), Atoms("Og")], UnknownElementError, r"structure 1 \(Og\): element\(s\) Og")])
def test_bad_predict_input(model, structures, error, match):
    with pytest.raises(error, match=match):
        model.predict(structures)


def test_stress_of_non_periodic_structure_is_an_error(calc32):
    atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    atoms.calc = calc32
    assert np.isfinite(atoms.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError, match="periodic in all three"):
        atoms.get_stress()


def test_megnet_warns_outside_its_training_domain():
    import jaxmat

    megnet = jaxmat.load_model("MEGNet-MP-2018.6.1-Eform")
    with pytest.warns(UserWarning, match=r"trained on periodic crystals only; structure\(s\) \[1, 2\]"):
        megnet.predict([bulk("NaCl", "rocksalt", 5.64), molecule("H2O"), Atoms("Si")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        megnet.predict([bulk("NaCl", "rocksalt", 5.64)])


# -- numbers that used to be silently wrong ------------------------------------------------------

@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_float32_total_of_a_2048_atom_cell(model):
    """The float32 calculator gives the 2,048-atom Si cell's energy within 1e-6 eV/atom of float64
    (a float32 sum was 0.133 eV, 6.5e-5 eV/atom, off). ``Model.predict`` and evaluation sum the same
    way (``host_graph_totals``)."""
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat((8, 8, 4))
    atoms.rattle(0.01, seed=0)
    e64 = model.predict([atoms], dtype="float64")[0]
    atoms.calc = JaxmatCalculator(model=model)
    e32 = atoms.get_potential_energy()
    assert len(atoms) == 2048 and abs(e32 - e64) / len(atoms) < 1e-6, (e32 - e64) / len(atoms)


def test_graph_totals_are_accurate_in_float32():
    """On the device, ``graph_totals`` sums 2,048 per-atom energies in float32 to about one rounding
    of the total; a plain float32 segment sum is tens of roundings off."""
    rng = np.random.default_rng(0)
    values = (-5.42 + 0.05 * rng.normal(size=4096)).astype(np.float32)
    index = np.repeat([0, 1], 2048).astype(np.int32)
    exact = np.array([values[:2048].astype(np.float64).sum(), values[2048:].astype(np.float64).sum()])
    ours = np.asarray(jax.jit(graph_totals, static_argnums=2)(jnp.asarray(values), jnp.asarray(index), 2), np.float64)
    plain = np.asarray(jax.ops.segment_sum(jnp.asarray(values), jnp.asarray(index), num_segments=2), np.float64)
    ulp = abs(float(np.spacing(np.float32(exact[0]))))
    assert np.all(np.abs(ours - exact) <= ulp), (ours - exact, ulp)
    print(f"2,048 float32 per-atom energies: plain segment sum {np.max(np.abs(plain - exact)) / ulp:.0f} roundings "
          f"off, graph_totals {np.max(np.abs(ours - exact)) / ulp:.2f}")
    grad = jax.grad(lambda v: jnp.sum(graph_totals(v, jnp.asarray(index), 2) * jnp.array([1.0, 2.0])))(jnp.asarray(values))
    np.testing.assert_allclose(np.asarray(grad), np.repeat([1.0, 2.0], 2048), rtol=1e-6)  # d total / d e_i = 1


@pytest.mark.parametrize("kind", ["atom unwrapped by 1e5 A", "molecule translated by 1e5 A"])
def test_coordinates_far_from_the_origin(model, calc32, calc64, kind):
    """float32 forces of a far-away structure equal those of the local one within 1e-4 eV/A (they
    were 0.06-0.11 eV/A off); float64 results do not change (checked on the crystal)."""
    if kind.startswith("atom"):
        near = bulk("Si", "diamond", 5.43, cubic=True)
        near.rattle(0.05, seed=1)
        far = near.copy()
        far.positions[3] += 18416 * near.cell[0]  # 1.0e5 A: the same crystal
    else:
        near = molecule("CH3CH2OH")
        far = near.copy()
        far.positions += 1e5
    out = {}
    for name, calc in (("32", calc32), ("64", calc64)) if kind.startswith("atom") else (("32", calc32),):
        for which, a in (("near", near), ("far", far)):
            a = a.copy()
            a.calc = calc
            out[which + name] = (a.get_potential_energy(), a.get_forces())
    assert np.abs(out["far32"][1] - out["near32"][1]).max() < 1e-4
    if "far64" in out:  # float64 results do not change (round-off of the wrap only)
        assert np.abs(out["far64"][1] - out["near64"][1]).max() < 1e-9
        assert out["far64"][0] == pytest.approx(out["near64"][0], abs=1e-9)


def test_cached_neighbour_list_follows_an_atom_across_the_cell_boundary(calc64):
    """Wrapping moves an atom that crosses a face by a lattice vector; the calculator's skinned
    neighbour list must follow (small moves reuse it, a wrap rebuilds it), giving what a fresh
    calculator gives."""
    fresh = JaxmatCalculator(dtype="float64", skin=0.0)
    atoms = bulk("Cu", "fcc", 3.6, cubic=True).repeat(2)
    atoms.positions[0] = [0.02, 0.02, 0.02]
    for dx in (0.0, -0.01, -0.03, -0.032, 0.05):
        a = atoms.copy()
        a.positions[0] += dx
        a.calc = calc64
        e1, f1 = a.get_potential_energy(), a.get_forces()
        a.calc = fresh
        assert a.get_potential_energy() == pytest.approx(e1, abs=1e-9)
        np.testing.assert_allclose(a.get_forces(), f1, atol=1e-9)
