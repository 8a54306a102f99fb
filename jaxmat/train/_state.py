"""The state of a training run and its creation (``create_train_state``, as in the Flax examples):
``TrainState`` (what changes and what a checkpoint holds) and ``Run`` (the fixed pieces: frames,
model, jitted steps), built fresh or restored from ``workdir``'s checkpoint."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxmat._io import atomic_write
from jaxmat.data import (batch_budget, build_graphs, epoch_batches, epoch_groups, make_batch, pad_budget_count,
                         pad_budgets)
from jaxmat.errors import ConfigError
from jaxmat.graph import StructureChecks
from jaxmat.models import Model
from jaxmat.train import _parallel
from jaxmat.train._checkpoint import load_checkpoint
from jaxmat.train._guards import check_ensemble_groups, check_freeze, record_config
from jaxmat.train._loss import METRIC_KEYS
from jaxmat.train._optim import freeze_labels, make_optimizer, with_frozen
from jaxmat.train._report import position
from jaxmat.train._setup import load_data, make_model, output_kind, prepare_params, read_labelled
from jaxmat.train._steps import build_steps, ensemble_template, init_seed, initial_members, member_batch, stack, subsample_masks

CSV_FIELDS = ["epoch", "step", "lr_scale", "train_loss", "train_e_mae", "train_f_mae", "train_s_mae",
              "val_loss", "val_e_mae", "val_e_rmse", "val_f_mae", "val_f_rmse", "val_s_mae", "val_s_rmse",
              "wall_s"]


class TrainState(NamedTuple):
    """What changes during a run, and what its checkpoint holds: the field names, in this order,
    are the keys of checkpoint format 1 (a run resumes across versions)."""

    params: Any  # the trained parameters (an ensemble's stacked over its members)
    ema: Any  # the zero-started EMA of ``params`` (``Run.ema_params`` debiases it), or ``params``
    opt_state: Any
    step: int  # optimizer steps taken
    epoch: int  # epochs completed
    batch_in_epoch: int  # batches of the current epoch taken (a resumed run skips them)
    lr_scale: float  # reduce-on-plateau's multiplier of the updates
    best_val: float  # the best validation loss so far (inf before the first)
    bad_epochs: int  # epochs since the best one (early stopping)
    plateau_bad: int  # epochs since the best one or the last reduction (reduce-on-plateau)
    epoch_sums: dict  # this epoch's training error sums so far (METRIC_KEYS)
    seed: int  # run.seed


class Run(NamedTuple):
    """The fixed pieces of one run (``create_train_state``); the ``TrainState`` is what changes."""

    workdir: Path
    log: Callable[[str], Any]
    writer: bool  # process 0 of a multi-host run writes files; the others compute
    kind: str  # "atoms" (a potential) or "graph" (a structure -> property model)
    model: Model  # the model trained: the config's, or an ensemble of its architecture (no params)
    train_frames: list
    valid_frames: list
    g_train: list  # the training frames' graphs
    budget: Any  # the padded size of a batch (jaxmat.data.batch_budget), or the budgets of jaxmat.data.pad_budgets
    masks: Any  # (K, n_train) 0/1: the frames each deep-ensemble member trains on, or None (all)
    batch_of: Callable  # training-frame indices -> the batch ``train_step`` takes
    train_step: Callable  # (params, opt_state, ema, batch, lr_scale) -> (params, opt_state, ema, sums, health)
    eval_step: Callable  # (params, batch) -> error sums
    valid_batches: list
    ema_params: Callable  # TrainState -> the weights validated and kept (the debiased EMA)
    learning_rate: float  # optim.learning_rate (named when training diverges)
    t_start: float  # time.perf_counter() when training started (wall_s, run.max_wall_minutes)


def create_train_state(cfg, workdir: Path, resume: bool, log) -> tuple[Run, TrainState]:
    """What the run of ``cfg`` needs (frames, model, optimizer, jitted steps: the ``Run``) and its
    initial or restored (``resume``) ``TrainState``, placed on the run's devices. Records the
    config (a refused resume stops here) and starts or truncates metrics.csv."""
    kind, ens, dtype = output_kind(cfg.model), cfg.ensemble, cfg.run.dtype
    train_frames, valid_frames, model, g_train, g_valid = _frames_and_model(cfg, kind, resume)
    writer = _parallel.is_writer()  # process 0 of a multi-host run writes; the others compute
    budget = batch_budget(g_train + g_valid, cfg.data.graphs_per_batch)
    n_dev, layout = _parallel.resolve_devices(cfg.run, ens, log)
    mesh = _parallel.make_mesh(n_dev) if n_dev > 1 else None
    dev_budget = None
    if layout == "data":  # one chunk of each global batch per device, padded to one per-device budget
        dev_budget = _parallel.device_budget(g_train + g_valid, cfg.data.graphs_per_batch, n_dev)
        log(f"data parallel on {n_dev} devices: {cfg.data.graphs_per_batch} structures per step split over them")
    first = epoch_batches(train_frames[:1], g_train[:1], budget, 0, 0, False, dtype)[0]
    n_steps = len(epoch_groups(g_train, budget, cfg.run.seed, 0))
    # a long run pads each batch to the cheapest of a few budgets (one compilation each; the batches stay the same)
    budgets = pad_budgets(g_train + g_valid, cfg.data.graphs_per_batch, pad_budget_count(cfg.optim.epochs * n_steps))
    budget = budgets if len(budgets) > 1 else budget
    tx, run_model, frozen, state = _initial_state(cfg, model, first.graph, n_steps, (train_frames, g_train),
                                                  workdir, resume, log)
    if not resume and writer:
        with open(workdir / "metrics.csv", "w", newline="") as fh:
            csv.writer(fh).writerow(CSV_FIELDS)
    state = _placed(state, layout, mesh)
    record_config(cfg, workdir, log, resume, write=writer)  # a refused resume stops every process
    if writer:
        _truncate_csv(workdir / "metrics.csv", state.epoch)
    train_step, eval_step = build_steps(cfg, run_model, tx, kind, mesh, layout)
    masks = subsample_masks(ens, cfg.run, len(train_frames))  # deep ensembles: the frames each member trains on
    batch_of = _batcher(ens, dtype, train_frames, g_train, budget, masks, layout, mesh, dev_budget)
    valid_batches = epoch_batches(valid_frames, g_valid, budget, 0, 0, False, dtype) if valid_frames else []
    if not valid_batches:
        log("no validation frames (data.valid_fraction 0): the last epoch's model is kept; no plateau, no early stopping")
    ema_params = lambda s: _ema_params(cfg.optim.ema_decay, frozen, s)  # noqa: E731
    run = Run(workdir, log, writer, kind, run_model, train_frames, valid_frames, g_train, budget, masks, batch_of,
              train_step, eval_step, valid_batches, ema_params, cfg.optim.learning_rate, time.perf_counter())
    return run, state


def _frames_and_model(cfg, kind, resume):
    """(train frames, valid frames, model, their graphs) of ``cfg``; a test file the model cannot
    read fails now, not after training."""
    if kind == "graph" and cfg.data.energy_key is None:
        raise ConfigError("config: data.energy_key is required for a structure -> property model (MEGNet): it names "
                          "the info key of the per-structure target; the calculator's total energy (eV) is not that "
                          "target (MEGNet-MP-2018.6.1-Eform predicts formation energy in eV/atom)")
    if kind == "graph" and cfg.ensemble.kind != "none":
        raise ConfigError("config: ensemble.kind must be 'none' for a structure -> property model (MEGNet): ensembles "
                          "are of potentials (energies, forces, stress)")
    train_frames, valid_frames = load_data(cfg, kind)
    model = make_model(cfg.model, cfg.run, train_frames, kind, valid_frames)
    checks = StructureChecks(**cfg.data.structure_checks)
    g_train, g_valid = build_graphs(train_frames, model, checks), build_graphs(valid_frames, model, checks)
    if cfg.data.test and not resume:
        build_graphs(read_labelled(cfg.data, cfg.data.test, kind), model, checks)
    return train_frames, valid_frames, model, g_train, g_valid


def _initial_state(cfg, model, graph, n_steps, train, workdir, resume, log):
    """(optimizer, the model trained, frozen labels, the fresh or restored state). ``train``: the
    training (frames, graphs); ``n_steps``: steps per epoch (the learning-rate schedule)."""
    dtype, ens, deep = cfg.run.dtype, cfg.ensemble, cfg.ensemble.kind == "deep"
    # the template fixes the structure for restoring; fresh runs fill it from the prepared params
    member = _cast(model.params if model.params is not None else model.init_params(graph, init_seed(cfg.run)), dtype)
    proto = stack(ens, [member] * (1 if ens.kind == "none" else ens.size))
    run_model = ensemble_template(ens, model, member)  # the model itself, or an ensemble of its architecture
    # the model's constants (M3GNet's per-structure shift) are never trained, whatever the config says
    check_freeze(member, cfg.model.freeze, model.constant_params)
    check_ensemble_groups(ens, member)
    tx = with_frozen(make_optimizer(cfg.optim, n_steps), member if deep else proto,
                     list(cfg.model.freeze) + list(model.constant_params))
    tx_init = jax.vmap(tx.init) if deep else tx.init  # a deep ensemble: one optimizer state per member
    state = TrainState(proto, proto, tx_init(proto), 0, 0, 0, 1.0, np.inf, 0, 0, zero_sums(), cfg.run.seed)
    if resume:
        state = _restored(load_checkpoint(workdir, state))
        log(f"resumed from {position(state.step, state.epoch, state.batch_in_epoch)}")
    else:
        prepare = lambda p: _cast(prepare_params(cfg, model, p, *train), dtype)  # noqa: E731
        params = stack(ens, initial_members(ens, cfg.run, model, graph, prepare))
        ema0 = jax.tree_util.tree_map(jnp.zeros_like, params) if cfg.optim.ema_decay > 0 else params
        state = state._replace(params=params, ema=ema0, opt_state=tx_init(params))
    return tx, run_model, freeze_labels(proto, cfg.model.freeze), state


def _restored(s: TrainState) -> TrainState:
    """A restored state with its counters as Python numbers (the checkpoint gives 0-d arrays)."""
    return s._replace(step=int(s.step), epoch=int(s.epoch), batch_in_epoch=int(s.batch_in_epoch),
                      lr_scale=float(s.lr_scale), best_val=float(s.best_val), bad_epochs=int(s.bad_epochs),
                      plateau_bad=int(s.plateau_bad), epoch_sums={k: float(v) for k, v in s.epoch_sums.items()},
                      seed=int(s.seed))


def _placed(state: TrainState, layout: str, mesh) -> TrainState:
    """``state`` on the run's devices: replicated (one model) or members split over them; every
    process of a multi-host run must start from the same state."""
    if layout != "single":
        place = _parallel.replicated if layout == "data" else _parallel.member_sharded
        state = state._replace(params=place(mesh, state.params), ema=place(mesh, state.ema),
                               opt_state=place(mesh, state.opt_state))
    if jax.process_count() > 1:  # shared workdir, same data
        multihost_utils.assert_equal((state.step, jax.device_get(state.params)),
                                     "the processes start from different states: do they share one workdir "
                                     "(a checkpoint only some of them see) and the same data?")
    return state


def _batcher(ens, dtype, frames, graphs, budget, masks, layout, mesh, dev_budget):
    """Training-frame indices -> the batch the train step takes: padded to ``budget`` (a deep
    ensemble's with each member's sample weights), or stacked over the devices (layout "data")."""
    n_atoms = [len(f.atoms) for f in frames]

    def batch_of(idx):
        if layout == "data":
            return _parallel.stacked_batch(mesh, idx, frames, graphs, dev_budget, dtype)
        b = make_batch(idx, frames, graphs, budget, dtype)
        return member_batch(ens, b, idx, masks, n_atoms) if ens.kind == "deep" else b

    return batch_of


def _ema_params(ema_decay, frozen, state: TrainState):
    """Debiased EMA of the weights; frozen parameters stay bit-identical."""
    if ema_decay <= 0 or state.step == 0:
        return state.params
    norm = 1.0 - ema_decay ** state.step
    return jax.tree_util.tree_map(lambda lab, e, p: p if lab == "frozen" else e / norm, frozen, state.ema, state.params)


def _cast(tree, dtype):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), tree)


def zero_sums():
    return {k: 0.0 for k in METRIC_KEYS}


def _truncate_csv(path: Path, epochs_done: int):
    """Drop metric rows of epochs after the restored checkpoint (a resumed run rewrites them)."""
    if not path.is_file():
        return
    rows = list(csv.reader(open(path)))
    keep = [rows[0]] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= epochs_done]
    text = io.StringIO(newline="")
    csv.writer(text).writerows(keep)
    atomic_write(path, text.getvalue().encode())  # a kill (or Ctrl-C) here keeps the old file whole
