"""Weighted energy/force/stress loss with masks for missing labels."""

from __future__ import annotations

import jax.numpy as jnp
import optax

from jaxmat.potential import energy_forces_stress

#: stress errors enter the loss in GPa (1 eV/A^3 = 160.21766 GPa)
EV_A3_TO_GPA = 160.21766208

#: keys of the error sums returned by ``loss_and_metrics`` (stress ones are 0 when unused)
METRIC_KEYS = ("n_e", "e_abs", "e_sq", "n_f", "f_abs", "f_sq", "n_s", "s_abs", "s_sq", "loss_sum")


def _per_component(err, kind: str, delta: float):
    return err**2 if kind == "mse" else 2.0 * optax.huber_loss(err, delta=delta)


def loss_and_metrics(params, batch, apply_fn, cfg, kind: str = "atoms", totals=None):
    """Scalar loss and a dict of error sums (for MAE/RMSE over an epoch).

    Potentials (``kind="atoms"``): energy per atom [eV/atom], force components [eV/A], stress
    components [GPa]; each a mean over the labelled entries of the batch (masks remove padding
    and missing labels), every entry multiplied by its structure's loss weight (``labels.weight``,
    ``loss.group_weights``); the error sums are unweighted. Structure -> property models
    (``kind="graph"``): the per-structure target (the "energy" label slot, in its own unit),
    weighted by ``energy_weight`` and the structure's loss weight. ``totals``: the denominators of
    the whole global batch when ``batch`` is one device's share (``potential_terms``).
    """
    lab = batch.labels
    if kind == "graph":
        err = apply_fn(params, batch.graph) - lab.energy
        em = lab.energy_mask
        n_e = jnp.sum(em)
        per_graph = _per_component(err, cfg.kind, cfg.huber_delta) * em * lab.weight
        loss = cfg.energy_weight * jnp.sum(per_graph) / jnp.maximum(n_e if totals is None else totals[0], 1)
        zero = jnp.zeros(())
        return loss, {"n_e": n_e, "e_abs": jnp.sum(jnp.abs(err) * em), "e_sq": jnp.sum(err**2 * em),
                      "n_f": zero, "f_abs": zero, "f_sq": zero, "n_s": zero, "s_abs": zero, "s_sq": zero,
                      "loss_sum": loss}
    want_stress = cfg.stress_weight > 0
    return potential_terms(energy_forces_stress(apply_fn, params, batch.graph, compute_stress=want_stress), lab, cfg,
                           totals)


def label_counts(lab):
    """(energies, force components, stress components) labelled in a batch: the loss's denominators."""
    return jnp.sum(lab.energy_mask), 3 * jnp.sum(lab.forces_mask), 9 * jnp.sum(lab.stress_mask)


def potential_terms(out: dict, lab, cfg, totals=None):
    """The potential's (loss, metrics) of ``loss_and_metrics`` from its predictions ``out``
    (``energy`` (G,), ``forces`` (N, 3) and, when ``cfg.stress_weight`` > 0, ``stress``).

    ``totals``: the denominators (``label_counts``) of the whole global batch when ``lab`` is one
    device's share of it (data parallelism: the shares' losses then add up to the global loss);
    the metrics' counts stay this batch's own."""
    want_stress = cfg.stress_weight > 0
    e_err = (out["energy"] - lab.energy) / lab.n_atoms
    f_err = out["forces"] - lab.forces
    em, fm, sm = lab.energy_mask, lab.forces_mask[:, None], lab.stress_mask[:, None, None]
    n_e, n_f, n_s = label_counts(lab)
    t_e, t_f, t_s = (n_e, n_f, n_s) if totals is None else totals
    per = lambda x: _per_component(x, cfg.kind, cfg.huber_delta)  # noqa: E731
    w, wa, ws = lab.weight, lab.atom_weight[:, None], lab.weight[:, None, None]
    e_loss = jnp.sum(per(e_err) * em * w) / jnp.maximum(t_e, 1)
    f_loss = jnp.sum(per(f_err) * fm * wa) / jnp.maximum(t_f, 1)
    loss = cfg.energy_weight * e_loss + cfg.forces_weight * f_loss
    metrics = {
        "n_e": n_e, "e_abs": jnp.sum(jnp.abs(e_err) * em), "e_sq": jnp.sum(e_err**2 * em),
        "n_f": n_f, "f_abs": jnp.sum(jnp.abs(f_err) * fm), "f_sq": jnp.sum(f_err**2 * fm),
    }
    if want_stress:
        s_err = (out["stress"] - lab.stress) * EV_A3_TO_GPA
        s_loss = jnp.sum(per(s_err) * sm * ws) / jnp.maximum(t_s, 1)
        loss = loss + cfg.stress_weight * s_loss
        metrics.update(n_s=n_s, s_abs=jnp.sum(jnp.abs(s_err) * sm), s_sq=jnp.sum(s_err**2 * sm))
    else:
        metrics.update(n_s=jnp.zeros(()), s_abs=jnp.zeros(()), s_sq=jnp.zeros(()))
    metrics["loss_sum"] = loss
    return loss, metrics


def summarize(sums: dict) -> dict:
    """MAE/RMSE from accumulated sums: energy meV/atom, forces eV/A, stress GPa."""
    out = {}
    for key, unit_scale in (("e", 1000.0), ("f", 1.0), ("s", 1.0)):
        n = float(sums.get(f"n_{key}", 0.0))
        if n > 0:
            out[f"{key}_mae"] = unit_scale * float(sums[f"{key}_abs"]) / n
            out[f"{key}_rmse"] = unit_scale * (float(sums[f"{key}_sq"]) / n) ** 0.5
    return out
