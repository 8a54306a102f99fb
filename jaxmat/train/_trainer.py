"""``train_and_evaluate(config, workdir)``: the training loop in the shape of the Flax examples.

``create_train_state`` (``_state``) builds what a run needs and its initial or restored
``TrainState``; ``train_epoch`` takes the steps of one epoch; ``end_epoch`` validates, reduces on
plateau, counts towards early stopping and keeps the best model; ``train_and_evaluate`` runs them
and writes the results.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxmat.arrays import early_stopping, patience_spent, reduce_on_plateau
from jaxmat.data import epoch_groups
from jaxmat.errors import TrainingError
from jaxmat.train import _parallel
from jaxmat.train._checkpoint import CHECKPOINT_FILE, save_checkpoint
from jaxmat.train._config import check_config
from jaxmat.train._guards import divergence, healthy, remove_orphans, saved_state
from jaxmat.train._interrupt import deferred_sigint
from jaxmat.train._loss import METRIC_KEYS, summarize
from jaxmat.train._results import save_best, write_results
from jaxmat.train._setup import read_labelled
from jaxmat.train._state import CSV_FIELDS, Run, TrainState, create_train_state, zero_sums


def train_and_evaluate(cfg, workdir, resume: bool = False, log=print) -> dict:
    """Train ``cfg`` in ``workdir``: metrics.csv, checkpoint.msgpack, best_model/ (a bundle),
    learning_curves.png and parity plots. Returns the final metrics of the best model."""
    check_config(cfg)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    has_ckpt = (workdir / CHECKPOINT_FILE).is_file()
    if has_ckpt and not resume:
        raise ValueError(f"{workdir} already holds a checkpoint: pass --resume to continue it, or use a new workdir")
    if _parallel.is_writer():
        remove_orphans(workdir, log)
    if resume and not has_ckpt:
        log(f"--resume: {workdir} holds no {CHECKPOINT_FILE}, so there is nothing to continue: starting a new run")
    with jax.enable_x64(cfg.run.dtype == "float64"):
        run, state = create_train_state(cfg, workdir, resume and has_ckpt, log)
        with deferred_sigint(enabled=jax.process_count() == 1) as stop:  # Ctrl-C: checkpoint, KeyboardInterrupt
            state, ended = train_epochs(run, state, cfg.optim, cfg.run, stop)
        return _results(cfg, run, state, ended)


def train_epochs(run: Run, state: TrainState, ocfg, rcfg, stop=lambda: False) -> tuple[TrainState, str]:
    """Epochs until ``optim.epochs``, early stopping or a limit of the run section ``rcfg``.
    Returns the state and why training ended: "epochs", "early_stopping", "wall_time" or
    "max_steps" (results.json). ``stop() -> bool`` is read after every step (``train_epoch``)."""
    if _early_stopped(state, ocfg):  # read from the state: a resumed run that had stopped early stays stopped
        run.log(f"early stopping had ended this run after epoch {state.epoch}; nothing left to train")
    ended = "epochs"
    while state.epoch < ocfg.epochs and not _early_stopped(state, ocfg):
        state, n_batches, halt = train_epoch(run, state, rcfg, stop)
        ended = halt or ended
        if halt and state.batch_in_epoch < n_batches:  # stopped within the epoch
            _checkpoint(run, state)
            break
        state = end_epoch(run, state, n_batches, ocfg)
        if halt:
            break
    if _early_stopped(state, ocfg):
        ended = "early_stopping"
    elif state.epoch >= ocfg.epochs:  # a stop that fell on the last epoch's end ended nothing early
        ended = "epochs"
    return state, ended


def train_epoch(run: Run, state: TrainState, rcfg, stop=lambda: False) -> tuple[TrainState, int, str | None]:
    """The remaining steps of epoch ``state.epoch``. Returns (state, the epoch's number of batches,
    None or why the run halts: "wall_time" or "max_steps" of the run section ``rcfg``). When ``stop()``
    turns True (Ctrl-C, ``deferred_sigint``) the state after the last step is checkpointed and
    ``KeyboardInterrupt`` raised."""
    epoch = state.epoch
    groups = epoch_groups(run.g_train, run.budget, rcfg.seed, epoch)  # as epoch_batches, keeping the frame indices
    bar = _progress(rcfg.progress, len(groups), epoch)  # each batch is padded and sent to the devices just before its step
    halt = None
    for k, idx in enumerate(groups):
        if k < state.batch_in_epoch:
            continue
        p, o, e, sums, health = run.train_step(state.params, state.opt_state, state.ema, run.batch_of(idx),
                                               jnp.asarray(state.lr_scale, rcfg.dtype))
        sums, health = jax.device_get((sums, health))
        if not healthy(health):
            _checkpoint(run, state)  # the last good state: resumable, e.g. with a lower learning rate
            raise divergence(health, state.step, (epoch, k, len(groups)), idx, run.train_frames, run.learning_rate,
                             run.workdir)
        acc = state.epoch_sums
        state = state._replace(params=p, opt_state=o, ema=e, step=state.step + 1, batch_in_epoch=k + 1,
                               epoch_sums={key: float(acc[key]) + float(sums[key]) for key in METRIC_KEYS})
        if bar is not None:
            bar.set_postfix(loss=f"{float(sums['loss_sum']):.4g}")
            bar.update(1)
        stopping = stop()
        if state.step % rcfg.checkpoint_every_steps == 0 or stopping:
            _checkpoint(run, state)
        if stopping:
            raise KeyboardInterrupt
        halt = _halt(run, state, rcfg)
        if halt:
            break
    if bar is not None:
        bar.close()
    return state, len(groups), halt


def _halt(run: Run, state: TrainState, rcfg) -> str | None:
    """"wall_time" past ``run.max_wall_minutes`` (process 0's clock decides for all), "max_steps" at
    ``run.max_steps``, else None."""
    over_time = bool(rcfg.max_wall_minutes) and time.perf_counter() - run.t_start > 60 * rcfg.max_wall_minutes
    if rcfg.max_wall_minutes and jax.process_count() > 1:
        over_time = bool(multihost_utils.broadcast_one_to_all(np.asarray(over_time)))
    if not over_time and (rcfg.max_steps is None or state.step < rcfg.max_steps):
        return None
    run.log(f"stopping at step {state.step} ({'wall-time budget' if over_time else 'max_steps'}); resume with --resume")
    return "wall_time" if over_time else "max_steps"


def end_epoch(run: Run, state: TrainState, n_batches: int, ocfg) -> TrainState:
    """After the last step of an epoch: validate the EMA weights, reduce on plateau and count towards
    early stopping (the optim section ``ocfg``), keep the best model, write the metrics row and the
    checkpoint. Without validation frames every epoch's model replaces the last."""
    epoch = state.epoch
    val_loss, vm = _validate(run, state)
    improved = not run.valid_batches or val_loss < state.best_val
    if run.valid_batches:
        state = plateau_and_stopping(state, val_loss, ocfg)
    _record(run, state, n_batches, val_loss, vm, improved)
    if improved:
        best = jax.device_get(run.ema_params(state))  # every process computes, process 0 writes
        if run.writer:
            save_best(run.workdir, run.model, best, {"epoch": epoch + 1, **vm})
    state = state._replace(epoch=epoch + 1, batch_in_epoch=0, epoch_sums=zero_sums())
    _checkpoint(run, state)
    if _early_stopped(state, ocfg):
        run.log(f"early stopping after {epoch + 1} epochs")
    return state


def _validate(run: Run, state: TrainState) -> tuple[float, dict]:
    """(validation loss per batch, its summarized metrics) of the EMA weights; (nan, {}) without
    validation frames. A non-finite loss is an error (the state is checkpointed first)."""
    if not run.valid_batches:
        return float("nan"), {}
    val = {}
    for b in run.valid_batches:
        for key, v in jax.device_get(run.eval_step(run.ema_params(state), b)).items():
            val[key] = val.get(key, 0.0) + float(v)
    val_loss = val["loss_sum"] / len(run.valid_batches)
    if not np.isfinite(val_loss):
        _checkpoint(run, state)
        raise TrainingError(
            f"epoch {state.epoch + 1}: the validation loss is {val_loss} although every parameter is finite: the model "
            f"gives a non-finite prediction for a validation structure. This epoch's model was not kept as "
            f"best; {saved_state(run.workdir)}")
    return val_loss, summarize(val)


def plateau_and_stopping(state: TrainState, val_loss: float, ocfg) -> TrainState:
    """The state's counters after an epoch's validation loss: ``jaxmat.arrays``' reduce-on-plateau
    (no minimum scale) and early stopping (``optim.early_stopping_patience`` 0: off), the one
    implementation both training loops use."""
    logs = {"epoch": state.epoch + 1, "val_loss": val_loss}
    plateau, _ = reduce_on_plateau(ocfg.plateau_patience, ocfg.plateau_factor, min_scale=0.0).update(
        {"best": state.best_val, "bad": state.plateau_bad, "scale": state.lr_scale}, logs)
    stopping, _ = early_stopping(ocfg.early_stopping_patience or None).update(
        {"best": state.best_val, "bad": state.bad_epochs}, logs)
    return state._replace(lr_scale=plateau["scale"], best_val=stopping["best"], bad_epochs=stopping["bad"],
                          plateau_bad=plateau["bad"])


def _early_stopped(state: TrainState, ocfg) -> bool:
    return patience_spent(state.bad_epochs, ocfg.early_stopping_patience or None)


def _record(run: Run, state: TrainState, n_batches: int, val_loss: float, vm: dict, improved: bool) -> None:
    """The epoch's row of metrics.csv (process 0) and its log line."""
    tm = summarize(state.epoch_sums)
    row = {"epoch": state.epoch + 1, "step": state.step, "lr_scale": float(state.lr_scale),
           "train_loss": float(state.epoch_sums["loss_sum"]) / n_batches, "val_loss": val_loss,
           **{f"train_{k}": v for k, v in tm.items() if k.endswith("mae")}, **{f"val_{k}": v for k, v in vm.items()},
           "wall_s": time.perf_counter() - run.t_start}
    if run.writer:
        with open(run.workdir / "metrics.csv", "a", newline="") as fh:
            csv.DictWriter(fh, CSV_FIELDS).writerow({k: row.get(k, "") for k in CSV_FIELDS})
    shown, which = (vm, f"val {val_loss:.4g}") if run.valid_batches else (tm, "(no validation) train")
    run.log(f"epoch {state.epoch + 1:4d}  train {row['train_loss']:.4g}  {which}  "
            f"E {shown.get('e_mae', float('nan')):.2f} meV/atom  F {shown.get('f_mae', float('nan')):.4f} eV/A"
            f"{'  *' if improved and run.valid_batches else ''}")


def _checkpoint(run: Run, state: TrainState) -> None:
    if run.writer:
        save_checkpoint(run.workdir, state)


def _results(cfg, run: Run, state: TrainState, ended: str) -> dict:
    """Evaluate the best model and write results.json (``write_results``); in a multi-host run process 0
    does it while the others wait (leaving early would end the job under srun)."""
    test_frames = read_labelled(cfg.data, cfg.data.test, run.kind) if cfg.data.test else []
    frames = (run.train_frames, run.valid_frames, test_frames)
    if jax.process_count() == 1:
        return write_results(cfg.data, cfg.ensemble, run.workdir, cfg.run.dtype, frames, run.masks, run.log, ended)
    # every process must hold the parameters process 0 wrote
    multihost_utils.assert_equal(jax.device_get(state.params), "the processes ended training with different parameters")
    results = write_results(cfg.data, cfg.ensemble, run.workdir, cfg.run.dtype, frames, run.masks, run.log, ended) \
        if run.writer else {}
    multihost_utils.sync_global_devices("jaxmat train: results written")
    return results


def _progress(show: bool, total, epoch):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch + 1}", leave=False)


