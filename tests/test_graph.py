"""Graph construction, batching and padding."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list

from jaxmat.graph import (
    PadSizes,
    atoms_to_graph,
    batch_graphs,
    bucket_sizes,
    cast_floats,
    graph_sizes,
    pad_graph,
)
from jaxmat.potential import energy_forces_stress


def structures(reference_frames):
    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)  # pbc = [T, T, F]
    return {
        "si_primitive": bulk("Si", "diamond", 5.43),
        "mgo_triclinic_small": reference_frames["MgO_triclinic"],
        "slab_mixed_pbc": slab,
        "molecule": molecule("CH3CH2OH"),
        "tiny_cell": Atoms("Mg", cell=[[2.0, 0.1, 0], [0.3, 2.1, 0], [0.2, 0.1, 1.9]], pbc=True),
    }


def test_edges_match_ase(reference_frames):
    """The same bonds (pairs and bond vectors) as ASE's neighbour list. Graph positions are wrapped
    into the cell, so integer shifts may differ from ASE's by the wrapping; bond vectors may not."""
    for name, atoms in structures(reference_frames).items():
        g = atoms_to_graph(atoms, 5.0).graph
        pos, cell = g.nodes["positions"], g.globals["cell"][0]
        vec = pos[g.receivers] - pos[g.senders] + g.edges["shifts"] @ cell
        i, j, D = neighbor_list("ijD", atoms, 5.0)
        key = lambda s, r, v: np.lexsort((*np.round(v, 4).T[::-1], r, s))  # noqa: E731
        a, b = key(g.senders, g.receivers, vec), key(i, j, D)
        assert len(a) == len(b), name
        assert np.array_equal(g.senders[a], i[b]) and np.array_equal(g.receivers[a], j[b]), name
        np.testing.assert_allclose(vec[a], D[b], atol=1e-9, err_msg=name)
        assert np.all(np.diff(g.receivers) >= 0), "edges must be sorted by receiver"


def test_positions_are_localised(reference_frames):
    """Periodic directions: inside the cell; non-periodic ones: centred on the bounding box."""
    for name, atoms in structures(reference_frames).items():
        shifted = atoms.copy()
        shifted.positions += 1e4 * np.array([1.0, -2.0, 3.0])
        pos = atoms_to_graph(shifted, 5.0).graph.nodes["positions"]
        assert np.abs(pos).max() < 50.0, name
        periodic = atoms.cell.array[atoms.pbc]
        if len(periodic):  # inside the cell along the periodic directions
            frac = np.linalg.lstsq(periodic.T, pos.T, rcond=None)[0].T if len(periodic) < 3 else \
                np.linalg.solve(periodic.T, pos.T).T
            assert frac.min() > -1e-8 and frac.max() < 1 + 1e-8, name


def test_triplets_match_brute_force(reference_frames):
    for name, atoms in structures(reference_frames).items():
        g = atoms_to_graph(atoms, 5.0, 4.0)
        G = g.graph
        pos, cell = G.nodes["positions"], G.globals["cell"][0]
        d = np.linalg.norm(pos[G.receivers] - pos[G.senders] + G.edges["shifts"] @ cell, axis=1)
        expected = set()
        for a, b in itertools.permutations(range(G.senders.size), 2):
            if G.senders[a] == G.senders[b] and d[a] <= 4.0 and d[b] <= 4.0:
                expected.add((a, b))
        got = set(zip(g.triplets.edge_ij.tolist(), g.triplets.edge_ik.tolist()))
        assert got == expected, name
        assert np.all(np.diff(g.triplets.edge_ij) >= 0)


def test_small_cell_sees_many_images():
    atoms = Atoms("Mg", cell=np.eye(3) * 2.0, pbc=True)
    g = atoms_to_graph(atoms, 5.0, 4.0)
    assert g.graph.n_edge[0] == len(neighbor_list("i", atoms, 5.0)) == 80  # images within 5 A
    assert np.all(g.graph.senders == 0) and np.all(g.graph.receivers == 0)


def _efs_fn(model, stress=True):
    """The jitted ``(params, graph) -> {"energy", "forces"[, "stress"]}`` of ``model``."""
    return jax.jit(lambda p, g: energy_forces_stress(model.apply, p, g, stress))


def _evaluate(model, g, stress=True, fn=None):
    """float64 energy, forces and stress of the padded graph `g`; pass the same `fn` (``_efs_fn``) to
    calls whose graphs share their padded shapes, so that they compile once."""
    fn = fn or _efs_fn(model, stress)
    with jax.enable_x64(True):
        g = jax.tree_util.tree_map(jnp.asarray, cast_floats(g, "float64"))
        return jax.device_get(fn(model.params, g))


def test_batched_equals_single_and_padding_changes_nothing(model, reference_frames):
    frames = [reference_frames[k] for k in ("Si2_primitive", "MgO_triclinic", "MoS_cubic", "LiFePO4_olivine")]
    singles = [atoms_to_graph(a, model.cutoff, model.three_body_cutoff) for a in frames]
    # every single padded to one shape (one compilation), beyond its own bucket for all but the largest
    common = PadSizes(*np.max([bucket_sizes(graph_sizes(g)) for g in singles], axis=0).tolist())
    fn = _efs_fn(model)
    one_by_one = [_evaluate(model, pad_graph(g, common), fn=fn) for g in singles]
    batch = batch_graphs(singles)
    assert np.all(np.diff(batch.graph.receivers) >= 0) and np.all(np.diff(batch.triplets.edge_ij) >= 0)
    real = graph_sizes(batch)
    for sizes in (bucket_sizes(real), PadSizes(real.n_node + 37, real.n_edge + 501, real.n_triplet + 999, real.n_graph + 3)):
        out = _evaluate(model, pad_graph(batch, sizes))
        start = 0
        for k, (a, single) in enumerate(zip(frames, one_by_one)):
            n = len(a)
            assert out["energy"][k] == pytest.approx(single["energy"][0], abs=1e-9)
            np.testing.assert_allclose(out["forces"][start : start + n], single["forces"][:n], atol=1e-9)
            np.testing.assert_allclose(out["stress"][k], single["stress"][0], atol=1e-10)
            start += n
        # padding nodes and graphs contribute nothing and stay finite (jax_debug_nans is on)
        assert np.all(out["forces"][real.n_node :] == 0) and np.all(out["energy"][real.n_graph :] == 0)


def test_molecule_without_triplets_or_edges(model):
    """An isolated atom has no edges at all: the graph pads cleanly and gives finite outputs."""
    g = atoms_to_graph(Atoms("Si", positions=[[0, 0, 0]]), model.cutoff, model.three_body_cutoff)
    assert g.graph.n_edge[0] == 0 and g.triplets.n_triplet[0] == 0
    out = _evaluate(model, pad_graph(g, bucket_sizes(graph_sizes(g))), stress=False)
    assert np.isfinite(out["energy"][0]) and np.all(out["forces"] == 0)
