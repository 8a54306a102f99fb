"""Fit the LLPR of a trained potential (``jaxmat.models._llpr``) on labelled frames, and score it.

``fit_llpr(model, train_frames, valid_frames)``:

1. the last-layer features Phi (P,) of every training frame, from the forward pass: the covariance
   C = sum (Phi/n)(Phi/n)^T (n atoms), in float64, and its eigenvectors V (eigenvalues lam);
2. on the validation frames, the model's errors and the gradients of all P projections V^T Phi
   (one forward, one backward with 1 + P cotangents per batch): every spread below for any
   regularizer is then a small numpy computation;
3. for each regularizer reg (a grid relative to mean(lam)), Sigma = V diag(1/(lam + reg)) V^T; the
   force directions are rotated so that the first r carry the most force variance on these frames
   (eigenvectors of the whitened gradients' second moment); the force scale alpha_F is the NLL
   optimum (``jaxmat.uncertainty.nll_scale``) and reg the one with the lowest calibrated force NLL
   (energy NLL without force labels), as Bigi et al. tune (alpha, reg) on validation; with r = 0
   (local) there are no gradients: the force spread of an atom is its energy std split evenly over
   its components, the stress spread the structure's energy std per volume, and A = V diag(sqrt w);
4. alpha_E, alpha_F, alpha_S: NLL-optimal scales on the validation frames (method "nll").

``llpr_predict`` gives (ref, err, raw sigma) per quantity on any frames, for
``jaxmat.uncertainty.calibration_metrics``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat import uncertainty as uq
from jaxmat.data import batch_budget, build_graphs, make_batch, pack
from jaxmat.errors import ConfigError, DatasetError
from jaxmat.graph import DEFAULT_CHECKS, atoms_to_graph, bucket_sizes, cast_floats, graph_sizes, pad_graph
from jaxmat.models import (
    Ensemble,
    LLPRModel,
    default_layer,
    feature_rows,
    host_graph_totals,
    isotropic,
    layer_param,
    layer_size,
    llpr_outputs,
    local_sigma,
    with_layer_param,
)
from jaxmat.train._per_atom import atom_report
from jaxmat.train._uq import REPORT_UNITS

#: regularizers tried, relative to the mean eigenvalue of the training covariance
REG_GRID = tuple(10.0**k for k in range(-9, 1))


def _batches(model, frames, graphs_per_batch, dtype, checks):
    graphs = build_graphs(frames, model, checks)
    budget = batch_budget(graphs, graphs_per_batch)
    for idx in pack(np.arange(len(frames)), graphs, budget):
        yield idx, make_batch(idx, frames, graphs, budget, dtype).graph, budget


def training_covariance(model, layer, frames, graphs_per_batch=4, dtype="float32", checks=DEFAULT_CHECKS):
    """C (P, P) float64 = sum over ``frames`` of (Phi/n)(Phi/n)^T (forward passes only)."""
    P = layer_size(model.params, layer)
    C = np.zeros((P, P))
    with jax.enable_x64(dtype == "float64"):
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), model.params)
        eye = jnp.eye(P, dtype=dtype)
        fn = jax.jit(lambda p, g: feature_rows(model, layer, p, g, eye)[1:])
        for idx, g, budget in _batches(model, frames, graphs_per_batch, dtype, checks):
            rows = np.asarray(fn(params, g), np.float64)  # (P, N)
            index = np.asarray(g.graph.nodes["graph_index"])
            phi = np.stack([host_graph_totals(r, index, budget.n_graph) for r in rows], axis=1)[: len(idx)]
            phi /= np.array([len(frames[i].atoms) for i in idx])[:, None]
            C += phi.T @ phi
    return C


def projected(model, layer, directions, frames, n_grad, graphs_per_batch=4, dtype="float32", checks=DEFAULT_CHECKS):
    """Per labelled entry of ``frames``: the model's prediction and reference, and the projections
    on the columns of ``directions`` (P, Q) of the features (energies: all Q, per structure) and
    of their gradients (forces and stress: the first n_grad - 1 columns). Energies per atom. For the
    local spreads (r = 0) also ``f_local`` (n, Q): each force-labelled atom's own energy projections
    (eV), and ``s_eproj`` (Q,) / ``s_vol``: the structure's energy projections (eV) and volume (A^3)."""
    keys = ("e", "e_ref", "e_proj", "f", "f_ref", "f_grad", "f_local", "s", "s_ref", "s_grad", "s_eproj", "s_vol",
            "n_atoms", "f_frame")
    out = {k: [] for k in keys}
    with jax.enable_x64(dtype == "float64"):
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), model.params)
        A = jnp.asarray(directions, dtype)
        fn = jax.jit(lambda p, g: llpr_outputs(model, layer, p, A, g, True, n_grad))
        for idx, g, budget in _batches(model, frames, graphs_per_batch, dtype, checks):
            res = jax.device_get(fn(params, g))
            index = np.asarray(g.graph.nodes["graph_index"])
            totals = np.stack([host_graph_totals(r, index, budget.n_graph) for r in np.asarray(res["energies"])])
            start = 0
            for k, i in enumerate(idx):
                f, n = frames[i], len(frames[i].atoms)
                if f.energy is not None:
                    out["e"].append(totals[0, k] / n)
                    out["e_ref"].append(f.energy / n)
                    out["e_proj"].append(totals[1:, k] / n)
                    out["n_atoms"].append(n)
                if f.forces is not None:
                    out["f"].append(res["forces"][0, start : start + n])
                    out["f_ref"].append(f.forces)
                    out["f_grad"].append(np.moveaxis(res["forces"][1:, start : start + n], 0, -1))  # (n, 3, Q)
                    out["f_local"].append(np.asarray(res["energies"][1:, start : start + n]).T)  # (n, Q)
                    out["f_frame"].append(np.full(n, i))
                if f.stress is not None:
                    out["s"].append(res["stress"][0, k])
                    out["s_ref"].append(f.stress)
                    out["s_grad"].append(np.moveaxis(res["stress"][1:, k], 0, -1))  # (3, 3, Q)
                    out["s_eproj"].append(totals[1:, k])
                    periodic = bool(np.all(f.atoms.pbc))  # else the model's stress is 0: a local sigma of 0 drops it
                    out["s_vol"].append(abs(float(np.linalg.det(np.asarray(f.atoms.cell, np.float64)))) if periodic
                                        else np.inf)
                start += n
    return {k: np.concatenate(v) if k in ("f", "f_ref", "f_grad", "f_local", "f_frame") and v else np.asarray(v, np.float64)
            for k, v in out.items()}


def _usable_nll(ref, err, sigma):
    e, s = uq.usable(ref, err, sigma)
    if e.size < 2:
        return None, None
    scale = uq.nll_scale(e, s)
    return scale, uq.gaussian_nll(e, scale * s)


def fit_llpr(model, train_frames, valid_frames, force_directions: int = 8, layer=None, graphs_per_batch: int = 4,
             dtype: str = "float32", checks=DEFAULT_CHECKS, regularizer: float | None = None) -> LLPRModel:
    """An ``LLPRModel`` of the single potential ``model`` (see the module docstring).

    ``force_directions``: r, the feature-gradient directions of the force and stress spreads (1 to
    P; P is exact; 0: "local", from each atom's energy variance at one model's cost, see
    ``jaxmat.models._llpr``); ``layer``: the last layer's parameter paths (default ``default_layer``);
    ``regularizer``: reg in (eV/atom)^2-feature units, fixed instead of chosen on the validation
    frames from ``REG_GRID`` x the mean eigenvalue of C."""
    if isinstance(model, (Ensemble, LLPRModel)) or model.output_kind != "atoms":
        raise ConfigError(f"LLPR needs a single potential (per-atom energies), got {type(model).__name__} {model.name}")
    if not train_frames or not valid_frames:
        raise DatasetError(f"LLPR needs training and validation frames, got {len(train_frames)} and {len(valid_frames)}")
    if regularizer is not None and not (isinstance(regularizer, (int, float)) and np.isfinite(regularizer)
                                        and regularizer > 0):
        raise ConfigError(f"llpr regularizer = {regularizer!r}: expected a finite number > 0 (or None: chosen on validation)")
    layer = list(layer or default_layer(model))
    P = layer_size(model.params, layer)
    if type(force_directions) is not int or not 0 <= force_directions <= P:
        raise ConfigError(f"llpr force_directions = {force_directions!r}: expected an integer from 0 (local) to {P} "
                          f"(the last layer has {P} parameters)")
    check_linear(model, layer, train_frames[0], checks)
    C = training_covariance(model, layer, train_frames, graphs_per_batch, dtype, checks)
    lam, V = np.linalg.eigh(C)
    lam = np.clip(lam, 0.0, None)
    n_grad = 1 if force_directions == 0 else 1 + P  # local (r = 0) needs no feature gradients
    val = projected(model, layer, V, valid_frames, n_grad, graphs_per_batch, dtype, checks)
    if not val["e_ref"].size and not val["f_ref"].size:
        raise DatasetError("cannot calibrate the LLPR: the validation frames have no energy or force labels")
    best = None
    grid = [float(regularizer)] if regularizer is not None else [rel * max(float(lam.mean()), 1e-300) for rel in REG_GRID]
    for reg in grid:
        cand = _candidate(lam, reg, val, force_directions)
        key = cand["nll_forces"] if cand["nll_forces"] is not None else cand["nll_energy"]
        if key is not None and (best is None or key < best[0]):
            best = (key, reg, cand)
    if best is None:
        raise DatasetError("cannot calibrate the LLPR: too few labelled validation entries with a non-zero reference")
    _, reg, cand = best
    A = V @ (np.sqrt(cand["w"])[:, None] * cand["Q"])  # A A^T = V diag(w) V^T = (C + reg I)^-1
    cal = {"energy": cand["scale_energy"], "forces": cand["scale_forces"], "stress": cand["scale_stress"], "method": "nll"}
    info = {"regularizer": reg, "n_features": P, "n_train_frames": len(train_frames),
            "n_calibration_frames": len(valid_frames), "captured_force_variance": cand["captured"]}
    return LLPRModel(model.family, dict(model.hyperparameters), model.params, dict(model.metadata), layer=tuple(layer),
                     directions=A, force_directions=force_directions, calibration=cal, info=info)


def _candidate(lam, reg, val, r) -> dict:
    """Spreads and NLL-optimal scales on the validation projections for one regularizer."""
    w = 1.0 / (lam + reg)
    out = {"w": w, "Q": np.eye(lam.size), "captured": None}
    sig_e = np.sqrt((val["e_proj"] ** 2) @ w) if val["e_ref"].size else np.zeros(0)
    out["scale_energy"], out["nll_energy"] = _usable_nll(val["e_ref"], val["e"] - val["e_ref"], sig_e)
    out["scale_forces"] = out["nll_forces"] = out["scale_stress"] = None
    if val["f_ref"].size and r == 0:  # local: the atom's energy std, split evenly over its components
        sig_f = isotropic(np.sqrt((val["f_local"] ** 2) @ w)).ravel()
        out["scale_forces"], out["nll_forces"] = _usable_nll(val["f_ref"], val["f"] - val["f_ref"], sig_f)
    elif val["f_ref"].size:
        gz = val["f_grad"].reshape(-1, lam.size) * np.sqrt(w)  # whitened gradients, one row per component
        evals, Q = np.linalg.eigh(gz.T @ gz)
        out["Q"] = Q[:, ::-1]  # directions carrying the most force variance first
        proj = gz @ out["Q"][:, :r]
        out["captured"] = float(np.sum(proj**2) / max(np.sum(gz**2), 1e-300))
        sig_f = np.sqrt(np.sum(proj**2, axis=1))
        out["scale_forces"], out["nll_forces"] = _usable_nll(val["f_ref"], val["f"] - val["f_ref"], sig_f)
    if val["s_ref"].size:
        if r == 0:  # local: sigma_E / V on every component
            sig_s = np.repeat(np.sqrt((val["s_eproj"] ** 2) @ w) / val["s_vol"], 9)
        else:
            sz = val["s_grad"].reshape(-1, lam.size) * np.sqrt(w) @ out["Q"][:, :r]
            sig_s = np.sqrt(np.sum(sz**2, axis=1))
        out["scale_stress"], _ = _usable_nll(val["s_ref"], val["s"] - val["s_ref"], sig_s)
    return out


def check_linear(model, layer, frame, checks=DEFAULT_CHECKS) -> None:
    """ConfigError unless the energy of ``frame`` is linear in the ``layer`` parameters (float64):
    E(theta + d) = E(theta) + Phi . d for a random d, as LLPR assumes of the last layer."""
    g = atoms_to_graph(frame.atoms, model.cutoff, model.three_body_cutoff, checks)
    g = cast_floats(pad_graph(g, bucket_sizes(graph_sizes(g))), "float64")
    P = layer_size(model.params, layer)
    d = np.random.default_rng(0).normal(size=P)
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), model.params)
        gj = jax.tree_util.tree_map(jnp.asarray, g)
        rows = feature_rows(model, layer, params, gj, jnp.asarray(d)[:, None])
        e0, f1 = float(jnp.sum(rows[0])), float(jnp.sum(rows[1]))
        moved, start = params, 0
        for path in layer:
            x = layer_param(params, path)
            moved = with_layer_param(moved, path, x + jnp.asarray(d[start : start + x.size]).reshape(x.shape))
            start += x.size
        e1 = float(jnp.sum(model.apply(moved, gj)))
    if not abs(e1 - e0 - f1) <= 1e-8 * (1 + abs(e0) + abs(e1)):
        raise ConfigError(f"LLPR: the energy of {model.name} is not linear in {layer}: moving them by d changes it by "
                          f"{e1 - e0:.6g} eV, the features predict {f1:.6g} eV; name the parameters of its last linear layer")


def llpr_predict(model: LLPRModel, frames, graphs_per_batch: int = 4, dtype: str = "float32",
                 checks=DEFAULT_CHECKS) -> dict:
    """{quantity: (ref, err, raw sigma)} flat over the labelled entries of ``frames`` (energies per
    atom), with the model's ``force_directions``; raw = before the calibration scales. Also
    ``forces_frame``: the frame index of each force row (n_atoms_total,)."""
    r = model.force_directions
    val = projected(model, list(model.layer), model.directions, frames, 1 + r, graphs_per_batch, dtype, checks)
    out = {}
    if val["e_ref"].size:
        out["energy"] = (val["e_ref"], val["e"] - val["e_ref"], np.sqrt(np.sum(val["e_proj"] ** 2, axis=1)))
    if val["f_ref"].size:
        sig = (np.sqrt(np.sum(val["f_grad"] ** 2, axis=-1)) if r  # (n, 3)
               else isotropic(local_sigma(val["f_local"].T)))
        out["forces"] = (val["f_ref"].ravel(), (val["f"] - val["f_ref"]).ravel(), sig.ravel())
        out["forces_frame"] = val["f_frame"]
    if val["s_ref"].size:
        sig = (np.sqrt(np.sum(val["s_grad"] ** 2, axis=-1)) if r
               else np.repeat(local_sigma(val["s_eproj"].T) / val["s_vol"], 9).reshape(val["s_ref"].shape))
        out["stress"] = (val["s_ref"].ravel(), (val["s"] - val["s_ref"]).ravel(), sig.ravel())
    return out


def llpr_report(model: LLPRModel, pred: dict) -> dict:
    """``jaxmat.train._uq.uncertainty_report`` of an LLPR model's ``llpr_predict`` (same keys and
    units, for ``format_report``), plus "atoms": the per-atom force report (``_per_atom``)."""
    report = {}
    for q in ("energy", "forces", "stress"):
        if q not in pred:
            continue
        e, s = uq.usable(*pred[q])
        if e.size < 2:
            continue
        unit, factor = REPORT_UNITS[q]
        e, s = factor * e, factor * s
        scale = model.spread_scale(q) if model.is_calibrated(q) else None
        report[q] = {"unit": unit, "raw": uq.calibration_metrics(e, s),
                     "calibrated": None if scale is None else uq.calibration_metrics(e, scale * s), "scale": scale}
    if "forces" in pred:
        ref, err, sigma = pred["forces"]
        report["atoms"] = atom_report(ref, err, sigma, model.spread_scale("forces") if model.is_calibrated("forces") else None)
    return report
