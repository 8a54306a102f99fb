"""LLPR (``jaxmat.models._llpr``, ``jaxmat.train._llpr``, ``jaxmat llpr``): variances equal a direct
numpy computation (explicit feature matrix, explicit inverse), the bundle round trip, the
calculator's result keys those of an ensemble, and the errors on bad input."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from helpers import TINY
from jaxmat import load_model
from jaxmat.calculators import JaxmatCalculator
from jaxmat.data import read_frames
from jaxmat.errors import BundleError, ConfigError
from jaxmat.models import Model, stack_members
from jaxmat.models import LLPRModel, default_layer, fresh_params
from jaxmat.train import fit_llpr


@pytest.fixture(scope="module")
def tiny():
    return Model("M3GNet", {"element_types": ["Si"], **TINY}, fresh_params("M3GNet", {"element_types": ["Si"], **TINY}, 1))


@pytest.fixture(scope="module")
def frames(labelled_file):
    fr = read_frames(labelled_file)
    return fr[:8], fr[8:]


@pytest.fixture(scope="module")
def direct(tiny, frames, probe):
    """Features, explicit feature matrix and feature gradients by ``_direct`` (float64)."""
    return _direct(tiny, default_layer(tiny), [fr.atoms for fr in frames[0]] + [probe])


@pytest.fixture(scope="module")
def exact(tiny, frames, direct):
    """The LLPR of the tiny model with every feature direction (exact force/stress variances), float64,
    with a regularizer that keeps the explicit inverse well conditioned."""
    P = TINY["readout_features"][-2] + 1
    F = direct[0]
    return fit_llpr(tiny, *frames, force_directions=P, dtype="float64", regularizer=1e-3 * np.trace(F.T @ F) / P)


@pytest.fixture(scope="module")
def probe():
    a = bulk("Si", "diamond", 5.43, cubic=True)
    a.rattle(0.1, seed=7)
    return a


def _results(model, atoms, dtype="float64"):
    a = atoms.copy()
    a.calc = JaxmatCalculator(model, dtype=dtype)
    a.get_potential_energy()
    return a.calc.results


def _direct(model, layer, structures):
    """By jax.grad of the energy with respect to the flattened last-layer parameters (float64), for
    each structure: Phi/n (P,) stacked into the feature matrix F (S, P), and for the last one Phi
    (P,), dPhi/dR (P, n, 3) and dPhi/d(strain)/V symmetrised (P, 3, 3)."""
    from jaxmat.graph import atoms_to_graph, bucket_sizes, cast_floats, graph_sizes, pad_graph
    from jaxmat.potential import _strained

    graphs = [atoms_to_graph(a, model.cutoff, model.three_body_cutoff) for a in structures]
    sizes = bucket_sizes(type(graph_sizes(graphs[0]))(*np.max([graph_sizes(g) for g in graphs], axis=0)))
    (gk, nk), (gb, nb) = [path.split("/") for path in layer]
    assert gk == gb
    with jax.enable_x64(True):
        p = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), model.params)
        shapes = (p[gk][nk].shape, p[gb][nb].shape)
        theta = jnp.concatenate([p[gk][nk].ravel(), p[gb][nb].ravel()])

        def energy(t, pos, strain, g):
            k, b = t[: np.prod(shapes[0])].reshape(shapes[0]), t[np.prod(shapes[0]):].reshape(shapes[1])
            G = g.graph
            gg = _strained(g._replace(graph=G._replace(nodes={**G.nodes, "positions": pos})), strain)
            return jnp.sum(model.apply({**p, gk: {**p[gk], nk: k, nb: b}}, gg))

        phi = jax.jit(jax.grad(energy))
        d_pos, d_strain = jax.jit(jax.jacrev(jax.grad(energy), argnums=1)), jax.jit(jax.jacrev(jax.grad(energy), argnums=2))
        rows = []
        for a, g in zip(structures, graphs):
            g = jax.tree_util.tree_map(jnp.asarray, cast_floats(pad_graph(g, sizes), "float64"))
            args = (theta, g.graph.nodes["positions"], jnp.zeros((sizes.n_graph, 3, 3)), g)
            rows.append(np.asarray(phi(*args)) / len(a))
        n = len(structures[-1])
        dR = np.asarray(d_pos(*args))[:, :n]
        dS = np.asarray(d_strain(*args))[:, 0] / abs(np.linalg.det(structures[-1].cell.array))
    return np.stack(rows[:-1]), rows[-1] * n, dR, 0.5 * (dS + np.swapaxes(dS, 1, 2))


def test_llpr_variances_equal_a_direct_computation(tiny, exact, direct, probe):
    F, f, dR, dS = direct  # explicit feature matrix (training frames, per atom), the probe's features
    inv = np.linalg.inv(F.T @ F + exact.info["regularizer"] * np.eye(F.shape[1]))  # explicit inverse
    cal = exact.calibration
    want_e = cal["energy"] * np.sqrt(f @ inv @ f)
    want_f = cal["forces"] * np.sqrt(np.einsum("pnc,pq,qnc->nc", dR, inv, dR))
    want_s = cal["stress"] * np.sqrt(np.einsum("pij,pq,qij->ij", dS, inv, dS))
    got = _results(exact, probe)
    assert got["energy_std"] == pytest.approx(want_e, rel=1e-7)
    np.testing.assert_allclose(got["forces_std"], want_f, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(got["stress_std"], want_s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]], rtol=1e-7, atol=1e-14)
    single = _results(tiny, probe)  # the mean is the single model's own prediction
    assert got["energy"] == pytest.approx(single["energy"], abs=1e-10)
    np.testing.assert_allclose(got["forces"], single["forces"], atol=1e-10)
    assert want_f.min() > 0 and exact.info["captured_force_variance"] == pytest.approx(1.0)


def _local_features(model, layer, atoms):
    """dE_i/dtheta (n, P) of each atom's energy by jax.jacrev (float64), unpadded rows."""
    from jaxmat.graph import atoms_to_graph, bucket_sizes, cast_floats, graph_sizes, pad_graph

    g = atoms_to_graph(atoms, model.cutoff, model.three_body_cutoff)
    (gk, nk), (_, nb) = [path.split("/") for path in layer]
    with jax.enable_x64(True):
        g = jax.tree_util.tree_map(jnp.asarray, cast_floats(pad_graph(g, bucket_sizes(graph_sizes(g))), "float64"))
        p = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), model.params)
        shapes = (p[gk][nk].shape, p[gk][nb].shape)
        theta = jnp.concatenate([p[gk][nk].ravel(), p[gk][nb].ravel()])

        def energies(t):
            k, b = t[: np.prod(shapes[0])].reshape(shapes[0]), t[np.prod(shapes[0]):].reshape(shapes[1])
            return model.apply({**p, gk: {**p[gk], nk: k, nb: b}}, g)

        return np.asarray(jax.jacrev(energies)(theta))[: len(atoms)]


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_local_llpr_spreads_equal_a_direct_computation(tiny, frames, exact, direct, probe, tmp_path):
    """force_directions=0: sigma_i^2 = phi_i^T Sigma phi_i per atom (forces: alpha_F sigma_i / sqrt 3
    on each component), the stress spread alpha_S sigma_E / V, the energy spread as the exact one's."""
    local = fit_llpr(tiny, *frames, force_directions=0, dtype="float64", regularizer=exact.info["regularizer"])
    F, f, _, _ = direct
    inv = np.linalg.inv(F.T @ F + exact.info["regularizer"] * np.eye(F.shape[1]))
    phi = _local_features(tiny, default_layer(tiny), probe)  # (n, P)
    np.testing.assert_allclose(phi.sum(axis=0), f, rtol=1e-9, atol=1e-12)  # they sum to the structure's features
    cal = local.calibration
    sigma_i = np.sqrt(np.einsum("np,pq,nq->n", phi, inv, phi))
    got = _results(local, probe)
    np.testing.assert_allclose(got["forces_std"], np.repeat(cal["forces"] * sigma_i[:, None] / np.sqrt(3), 3, axis=1),
                               rtol=1e-7)
    sigma_e = np.sqrt(f @ inv @ f)
    assert got["energy_std"] == pytest.approx(cal["energy"] * sigma_e, rel=1e-7)
    np.testing.assert_allclose(got["stress_std"], cal["stress"] * sigma_e / probe.get_volume() * np.ones(6), rtol=1e-7)
    assert cal["energy"] == pytest.approx(exact.calibration["energy"], rel=1e-9)  # same Sigma, same energy fit
    assert local.force_directions == 0 and sigma_i.min() > 0
    np.testing.assert_allclose(got["forces"], _results(exact, probe)["forces"], atol=1e-10)
    local.save(tmp_path / "local")  # the bundle keeps r = 0
    again = load_model(tmp_path / "local")
    assert again.force_directions == 0
    for k, v in _results(again, probe).items():
        np.testing.assert_array_equal(v, got[k])


@pytest.mark.slow  # a second fit (~15 s of CPU)
def test_fewer_directions_keep_the_leading_part_of_the_force_variance(tiny, frames, exact, probe):
    few = fit_llpr(tiny, *frames, force_directions=3, dtype="float64", regularizer=exact.info["regularizer"])
    assert 0 < few.info["captured_force_variance"] < 1
    np.testing.assert_allclose(few.directions, exact.directions, rtol=1e-9, atol=1e-12)  # same basis, truncated
    raw_few = _results(few, probe)["forces_std"] / few.calibration["forces"]
    raw_all = _results(exact, probe)["forces_std"] / exact.calibration["forces"]
    assert np.all(raw_few <= raw_all * (1 + 1e-9))  # a partial sum of the same positive terms
    assert np.mean(raw_few**2) > 0.3 * np.mean(raw_all**2)  # the leading directions carry most of it


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_bundle_round_trip_cli_and_ensemble_keys(tiny, frames, labelled_file, probe, tmp_path, capsys):
    from jaxmat.cli import main

    tiny.save(tmp_path / "tiny")
    assert main(["llpr", str(tmp_path / "tiny"), str(labelled_file), "--calibrate-on", str(labelled_file),
                 "--out", str(tmp_path / "llpr"), "--force-directions", "4", "--dtype", "float64"]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = load_model(tmp_path / "llpr")
    assert isinstance(loaded, LLPRModel) and loaded.force_directions == 4
    assert json.loads((tmp_path / "llpr" / "config.json").read_text())["format_version"] == 4
    again = tmp_path / "again"
    loaded.save(again)
    twice = load_model(again)
    np.testing.assert_array_equal(twice.directions, loaded.directions)
    assert twice.calibration == loaded.calibration and twice.layer == loaded.layer
    res, res2 = _results(loaded, probe), _results(twice, probe)
    for k in res:
        np.testing.assert_array_equal(res[k], res2[k])
    members = [tiny.with_params({**tiny.params, "readout": jax.tree_util.tree_map(lambda x: x * (1 + 0.1 * k),
                                                                                   tiny.params["readout"])})
               for k in range(2)]
    ens_res = _results(stack_members(members, kind="shallow"), probe)
    members_only = {"energies_members", "forces_members", "stress_members"}
    assert set(res) == set(ens_res) - members_only
    for k in ("energy_std", "forces_std", "stress_std"):
        assert np.shape(res[k]) == np.shape(ens_res[k])
    # a hand-edited calibration is refused (the llpr section is covered by config_sha256)
    cfg = json.loads((again / "config.json").read_text())
    cfg["llpr"]["calibration"]["forces"] *= 2
    (again / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="edited"):
        load_model(again)


def test_bad_llpr_input_is_refused(tiny, frames):
    with pytest.raises(ConfigError, match="not linear"):
        fit_llpr(tiny, *frames, layer=["readout/layers_0_kernel"], force_directions=1)
    with pytest.raises(ConfigError, match="force_directions"):
        fit_llpr(tiny, *frames, force_directions=-1)
    ens = stack_members([tiny, tiny.with_params(jax.tree_util.tree_map(lambda x: x * 1.1, tiny.params))])
    with pytest.raises(ConfigError, match="single potential"):
        fit_llpr(ens, *frames)


def test_per_atom_metrics_of_calibrated_gaussian_errors():
    from jaxmat.train._per_atom import atom_metrics, atom_norms

    rng = np.random.default_rng(0)
    sigma = np.exp(rng.normal(size=(4000, 1))) * np.ones((1, 3))  # isotropic per atom, varying across atoms
    err = sigma * rng.normal(size=sigma.shape)
    ref = np.ones_like(err)
    ref[:10] = 0  # atoms of a perfect crystal are dropped
    e, s = atom_norms(ref, err, sigma)
    assert e.size == 3990
    m = atom_metrics(e, s)
    assert m["scale"] == pytest.approx(1.0, abs=0.03)
    assert m["coverage_68"] == pytest.approx(0.6827, abs=0.03) and m["coverage_95"] == pytest.approx(0.9545, abs=0.02)
    assert m["spearman"] > 0.5 and m["auroc_worst10"] > 0.8
    assert atom_metrics(e, 2 * s)["coverage_68"] > 0.9  # too wide: over-covers


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_md_watch_and_evaluate_use_the_per_atom_norm(exact, probe, labelled_file, tmp_path, capsys):
    from jaxmat.cli import main
    from jaxmat.md import MDSettings, run_md

    calc = JaxmatCalculator(exact, dtype="float64")
    log = run_md(probe.copy(), calc, MDSettings(steps=2, log_every=2, max_force_std=1e9), trajectory=None)
    per_atom = np.linalg.norm(calc.results["forces_std"], axis=1)
    assert log["max_force_std"][-1] == pytest.approx(per_atom.max(), rel=1e-12)
    assert per_atom.max() > calc.results["forces_std"].max()  # the norm, not the largest component
    exact.save(tmp_path / "exact")
    assert main(["evaluate", str(tmp_path / "exact"), str(labelled_file), "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert "uncertainty (LLPR" in out and "|F| atom" in out and "forces" in out
