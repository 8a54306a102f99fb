"""The jitted training and evaluation steps: one model, a deep ensemble (the single-model step mapped
over stacked parameters, optimizer states, EMAs and per-member sample weights, by ``jax.vmap`` or
``lax.map``: ``member_mode``), a
shallow ensemble (one model whose loss scores the spread of its heads), and the initial members.

Member k of a deep ensemble trains exactly as a single run with ``run.init_seed = init_seed + k``
and the same data order would (its loss weights times its sub-sample mask when
``ensemble.bootstrap`` < 1): the vmapped step is that run's step, batched.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxmat.data import Batch, Labels
from jaxmat.errors import ConfigError
from jaxmat.models import Ensemble, Model
from jaxmat.train._guards import all_finite
from jaxmat.train._loss import loss_and_metrics, potential_terms
from jaxmat.train._parallel import stacked_loss

#: variance floor of the shallow objective: sigma >= 1e-4 (eV/atom, eV/A)
SIGMA_FLOOR = 1e-4
#: how the shallow loss maps over its heads: one head after another (``lax.map``) took 2.06 s per step
#: against 3.80 s vmapped (5 heads, small M3GNet, 4 Si64 cells, one core; the vmapped double backward
#: through the shared body materialises K copies of its intermediates)
SHALLOW_MODE = "sequential"


def init_seed(rcfg, member: int = 0) -> int:
    """Member ``member``'s initialisation seed: run.init_seed (else run.seed) + member; ``rcfg``: the run section."""
    base = rcfg.seed if rcfg.init_seed is None else rcfg.init_seed
    return int(base) + member


def initial_members(ens, rcfg, model: Model, graph, prepare) -> list:
    """The prepared initial parameters of each member (K single-model trees; one for ``kind="none"``).

    From scratch member k is drawn with seed ``init_seed + k``; a fine-tuned member starts from the
    pretrained weights with the groups ``ensemble.reinit`` (and, for a shallow ensemble, its heads)
    drawn with that seed. ``prepare`` refits element references etc. (``prepare_params``).
    ``ens``, ``rcfg``: the ensemble and run sections.
    """
    K = 1 if ens.kind == "none" else ens.size
    fresh_groups = set(ens.reinit) | (set(ens.heads) if ens.kind == "shallow" else set())
    members = []
    for k in range(K):
        seed = init_seed(rcfg, k)
        if model.params is None:
            params = model.init_params(graph, seed)
        else:
            params = model.params
            if fresh_groups and ens.kind != "none":
                fresh = model.init_params(graph, seed)
                missing = sorted(fresh_groups - set(fresh))
                if missing:
                    raise ConfigError(f"config: ensemble.reinit/heads name parameter group(s) {missing} this model does "
                                     f"not have; groups: {sorted(fresh)}")
                params = {g: (fresh[g] if g in fresh_groups else v) for g, v in params.items()}
        if ens.kind == "shallow" and k > 0:  # the shared body and references are member 0's
            members.append({g: params[g] if g in ens.heads else members[0][g] for g in members[0]})
        else:
            members.append(prepare(params))
    return members


def stack(ens, members):
    """One parameter tree: the single model, every group stacked (deep) or the heads stacked (shallow).
    ``ens``: the ensemble section."""
    if ens.kind == "none":
        return members[0]
    groups = members[0].keys() if ens.kind == "deep" else ens.heads
    return {g: (jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[m[g] for m in members]) if g in groups else v)
            for g, v in members[0].items()}


def ensemble_template(ens, model: Model, member_params):
    """The model the run trains: ``model`` itself, or an ``Ensemble`` of its architecture (no params
    yet); ``member_params``: one member's parameter tree (its groups); ``ens``: the ensemble section."""
    if ens.kind == "none":
        return model
    stacked = tuple(ens.heads) if ens.kind == "shallow" else tuple(member_params)
    return Ensemble(model.family, model.hyperparameters, None, dict(model.metadata), kind=ens.kind, stacked=stacked)


def subsample_masks(ens, rcfg, n_frames: int) -> np.ndarray | None:
    """(K, n_frames) 0/1 masks of the frames each deep-ensemble member trains on, or None (all).
    ``ens``, ``rcfg``: the ensemble and run sections."""
    if ens.kind != "deep" or ens.bootstrap >= 1:
        return None
    keep = max(1, int(round(ens.bootstrap * n_frames)))
    masks = np.zeros((ens.size, n_frames))
    for k in range(ens.size):
        masks[k, np.random.default_rng([init_seed(rcfg, k), 7919]).permutation(n_frames)[:keep]] = 1.0
    return masks


def member_batch(ens, batch: Batch, indices, masks, n_atoms) -> Batch:
    """A deep ensemble's batch: the labels' ``weight`` (K, G) and ``atom_weight`` (K, N) per member
    (``ens``: the ensemble section)."""
    lab = batch.labels
    K = ens.size
    w = np.repeat(np.asarray(lab.weight)[None], K, 0)
    aw = np.repeat(np.asarray(lab.atom_weight)[None], K, 0)
    if masks is not None:
        start = 0
        for g, i in enumerate(indices):
            w[:, g] *= masks[:, i]
            aw[:, start : start + n_atoms[i]] *= masks[:, i : i + 1]
            start += n_atoms[i]
    return batch._replace(labels=lab._replace(weight=w.astype(lab.weight.dtype), atom_weight=aw.astype(lab.weight.dtype)))


def _score(members, ref, weight, objective: str):
    """Weighted mean CRPS or Gaussian NLL of N(mean, var) over the member axis 0 for ``ref``."""
    mu = jnp.mean(members, axis=0)
    sigma = jnp.sqrt(jnp.var(members, axis=0, ddof=1) + SIGMA_FLOOR**2)
    z = (ref - mu) / sigma
    if objective == "nll":
        per = jnp.log(sigma) + 0.5 * z**2
    else:
        per = sigma * (z * (2 * jax.scipy.special.ndtr(z) - 1) + 2 * jnp.exp(-0.5 * z**2) / jnp.sqrt(2 * jnp.pi)
                       - 1 / jnp.sqrt(jnp.pi))
    return jnp.sum(per * weight) / jnp.maximum(jnp.sum(weight > 0), 1)


def shallow_loss(params, batch, ens: Ensemble, lcfg, ecfg):
    """Loss of the heads' mean (as one model's) + uncertainty_weight x the heads' proper score on
    energy per atom and on force components (zero-valued labels excluded)."""
    lab = batch.labels
    out = ens.member_results(params, batch.graph, lcfg.stress_weight > 0, SHALLOW_MODE)
    loss, metrics = potential_terms({k: jnp.mean(v, axis=0) for k, v in out.items()}, lab, lcfg)
    score_e = _score(out["energy"] / lab.n_atoms, lab.energy / lab.n_atoms, lab.energy_mask * lab.weight, ecfg.objective)
    fw = (lab.forces_mask[:, None] & (lab.forces != 0)) * lab.atom_weight[:, None]
    score_f = _score(out["forces"], lab.forces, fw, ecfg.objective)
    loss = loss + ecfg.uncertainty_weight * (lcfg.energy_weight * score_e + lcfg.forces_weight * score_f)
    return loss, {**metrics, "loss_sum": loss}


def _step(loss_fn, tx, ema_decay):
    """(params, opt_state, ema, batch, lr_scale) -> (params, opt_state, ema, sums, health)."""

    def step(params, opt_state, ema, batch, lr_scale):
        (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        updates = jax.tree_util.tree_map(lambda u: u * lr_scale, updates)
        params = optax.apply_updates(params, updates)
        if ema_decay > 0:  # debiased EMA (as optax.ema(debias=True)): zero start, see the trainer's ema_params
            ema = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
        else:
            ema = params
        # the host refuses the step (and keeps the previous state) unless all three are finite
        health = {"loss": loss, "gradient": all_finite(grads), "parameters": all_finite((params, ema))}
        return params, opt_state, ema, sums, health

    return step


def member_mode() -> str:
    """How a deep ensemble's training step maps over its members: ``lax.map`` (one after another) on
    the CPU, where it measured 2.8x one model for K = 5 against 5.4x vmapped (small M3GNet, 4 Si64
    frames; experiments/uncertainty/bench_ensemble.py); ``vmap`` on accelerators, where the member
    axis runs in parallel. Both are one jitted step and give the same numbers."""
    return "sequential" if jax.default_backend() == "cpu" else "vmap"


def build_steps(cfg, model, tx, kind: str, mesh=None, layout: str = "single"):
    """Jitted ``train_step(params, opt_state, ema, batch, lr_scale)`` and ``eval_step(params, batch)``
    -> error sums (averaged over the members of an ensemble) for the run's model.

    ``layout`` (``jaxmat.train._parallel``): "single" (one device), "data" (train batches stacked
    over the mesh's devices, parameters replicated) or "members" (a deep ensemble's member axis
    sharded over the mesh); eval batches are never stacked."""
    lcfg, ecfg = cfg.loss, cfg.ensemble
    if ecfg.kind == "shallow":
        loss_fn = lambda p, b: shallow_loss(p, b, model, lcfg, ecfg)  # noqa: E731
        return jax.jit(_step(loss_fn, tx, cfg.optim.ema_decay)), jax.jit(lambda p, b: loss_fn(p, b)[1])
    apply = (lambda p, g: Model.apply(model, p, g))  # one member's (or the model's) per-atom energies
    loss_fn = lambda p, b: loss_and_metrics(p, b, apply, lcfg, kind)  # noqa: E731
    step = _step(loss_fn, tx, cfg.optim.ema_decay)
    if ecfg.kind == "none":
        if layout == "data":  # the same step on the stacked global batch; every output replicated
            rep = NamedSharding(mesh, PartitionSpec())
            return (jax.jit(_step(stacked_loss(apply, lcfg, kind, mesh), tx, cfg.optim.ema_decay), out_shardings=rep),
                    jax.jit(lambda p, b: loss_fn(p, b)[1]))
        return jax.jit(step), jax.jit(lambda p, b: loss_fn(p, b)[1])
    per_member = Batch(None, Labels(*([None] * 7), 0, 0))  # the graph is shared, the sample weights are not

    def members_step(params, opt_state, ema, batch, lr_scale):
        if layout == "members" or member_mode() == "vmap":  # sharded members run side by side
            return jax.vmap(step, in_axes=(0, 0, 0, per_member, None))(params, opt_state, ema, batch, lr_scale)
        lab = batch.labels  # one member after another: its params, state, EMA and sample weights
        return jax.lax.map(lambda m: step(*m[:3], batch._replace(labels=lab._replace(weight=m[3], atom_weight=m[4])),
                                          lr_scale), (params, opt_state, ema, lab.weight, lab.atom_weight))

    shardings = {}
    if layout == "members":  # members stay split over the devices; sums and health replicated
        ms, rep = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
        shardings = {"out_shardings": (ms, ms, ms, rep, rep)}

    @functools.partial(jax.jit, **shardings)
    def train_step(params, opt_state, ema, batch, lr_scale):
        p, o, e, sums, health = members_step(params, opt_state, ema, batch, lr_scale)
        health = {"loss": jnp.sum(health["loss"]), "gradient": jnp.all(health["gradient"]),
                  "parameters": jnp.all(health["parameters"])}
        return p, o, e, jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), sums), health

    @jax.jit
    def eval_step(params, batch):
        sums = jax.vmap(lambda p: loss_fn(p, batch)[1])(params)
        return jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), sums)

    return train_step, eval_step
