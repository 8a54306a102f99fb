"""``train_and_evaluate(config, workdir)``: the training loop (Flax-examples style)."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_numbers
from jax.experimental import multihost_utils

from jaxmat.data import batch_budget, build_graphs, epoch_batches, epoch_groups, make_batch, read_frames, split
from jaxmat.errors import ConfigError, DatasetError, TrainingError
from jaxmat.graph import StructureChecks
from jaxmat.models import FAMILIES, Ensemble, Model, grow_model, load_model
from jaxmat.models._bundle import atomic_write
from jaxmat.models._model import default_hyperparameters
from jaxmat.train._config import check_config
from jaxmat.train._checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from jaxmat.train._guards import (check_ensemble_groups, check_freeze, divergence, healthy, record_config, remove_orphans,
                                  saved_state)
from jaxmat.train._evaluate import predict
from jaxmat.train._loss import METRIC_KEYS, summarize
from jaxmat.train._optim import freeze_labels, make_optimizer, with_frozen
from jaxmat.train import _parallel
from jaxmat.train._steps import build_steps, ensemble_template, init_seed, initial_members, member_batch, stack, subsample_masks
from jaxmat.train._results import finish, save_best
from jaxmat.train._report import position
from jaxmat.train._refs import fit_element_refs

CSV_FIELDS = ["epoch", "step", "lr_scale", "train_loss", "train_e_mae", "train_f_mae", "train_s_mae",
              "val_loss", "val_e_mae", "val_e_rmse", "val_f_mae", "val_f_rmse", "val_s_mae", "val_s_rmse",
              "wall_s"]


def output_kind(cfg) -> str:
    """"atoms" (potential: energy, forces, stress labels) or "graph" (one target per structure)."""
    if cfg.model.init_from:
        return init_model(cfg).output_kind
    if cfg.model.family not in FAMILIES:
        raise ValueError(f"unknown model family {cfg.model.family!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[cfg.model.family].output_kind


def init_model(cfg) -> Model:
    """The model ``model.init_from`` names; of an ensemble bundle, its member ``model.init_member``."""
    m = cfg.model
    base = load_model(m.init_from)
    if not isinstance(base, Ensemble):
        if m.init_member is not None:
            raise ConfigError(f"config: model.init_member = {m.init_member}, but model.init_from {m.init_from!r} is a "
                              "single model, not an ensemble: remove model.init_member")
        return base
    if m.init_member is None or m.init_member >= base.size:
        got = "is not set" if m.init_member is None else f"= {m.init_member} is out of range"
        raise ConfigError(f"config: model.init_from {m.init_from!r} is a {base.kind} ensemble of {base.size} members and "
                          f"model.init_member {got}: set model.init_member to a member 0 .. {base.size - 1} to fine-tune "
                          "it (fine-tune several into a new ensemble with ensemble.kind 'deep')")
    meta = {k: v for k, v in base.metadata.items() if k != "members"}
    meta["name"] = f"{base.name}[{m.init_member}]"  # recorded as the fine-tuned model's init_from
    return Model(base.family, base.hyperparameters, base.member_params(m.init_member), meta)


def _read(cfg, path, kind):
    d = cfg.data
    require = ("energy",) if kind == "graph" else ("energy", "forces") + (("stress",) if d.require_stress else ())
    return read_frames(path, energy_key=d.energy_key, forces_key=d.forces_key, stress_key=d.stress_key,
                       stress_factor=d.stress_factor, require=require)


def _group_weighted(cfg, frames, check: bool = True):
    """``frames`` with ``Frame.weight`` from ``loss.group_weights``. ``check``: a listed group no
    frame belongs to is an error (a misspelt group would otherwise weight nothing)."""
    weights, key = cfg.loss.group_weights, cfg.data.group_key
    if not weights:
        return frames
    groups = [str(f.atoms.info[key]) if key in f.atoms.info else None for f in frames]
    present = {g for g in groups if g is not None}
    missing = sorted(set(weights) - present)
    if check and missing:
        raise ValueError(f"loss.group_weights names group(s) {missing} that no frame of {cfg.data.train} has in "
                         f"info[{key!r}] (data.group_key); groups present: {sorted(present)}")
    return [f._replace(weight=float(weights.get(g, 1.0))) for f, g in zip(frames, groups)]


def _load_data(cfg, kind):
    frames = _group_weighted(cfg, _read(cfg, cfg.data.train, kind))
    if cfg.data.valid:
        return frames, _group_weighted(cfg, _read(cfg, cfg.data.valid, kind), check=False)
    if cfg.data.valid_fraction == 0:  # explicit: train on every frame, keep the last epoch's model
        return frames, []
    tr, va = split(len(frames), cfg.data.valid_fraction, cfg.run.seed)
    if len(va) == 0:
        raise ValueError("no validation frames: set data.valid or a larger data.valid_fraction")
    return [frames[i] for i in tr], [frames[i] for i in va]


def config_frames(cfg, which: str) -> list:
    """The labelled frames a run of ``cfg`` trains, validates or tests on (``which``: "train",
    "valid" or "test"), read with the config's label keys and split exactly as
    ``train_and_evaluate`` splits them. "valid" is [] when ``data.valid_fraction`` is 0 and "test"
    is [] without ``data.test``."""
    kind = output_kind(cfg)
    if which == "test":
        return _read(cfg, cfg.data.test, kind) if cfg.data.test else []
    if which not in ("train", "valid"):
        raise ValueError(f"which must be 'train', 'valid' or 'test', not {which!r}")
    return _load_data(cfg, kind)[which == "valid"]


def _make_model(cfg, frames, kind, valid_frames=()) -> Model:
    m = cfg.model
    if m.init_from:  # hyperparameters may only grow the pretrained model (function-preserving)
        base = init_model(cfg)
        return grow_model(base, seed=init_seed(cfg), **m.hyperparameters) if m.hyperparameters else base
    symbols = {s for f in frames for s in f.atoms.get_chemical_symbols()}
    for f in valid_frames:  # an element no training frame has would keep its random initial weights
        unseen = sorted(set(f.atoms.get_chemical_symbols()) - symbols)
        if unseen:
            raise DatasetError(f"{f.source}: element(s) {unseen} occur in validation frames but in no training frame: "
                               "a model trained from scratch would predict them with untrained weights")
    elements = sorted(symbols, key=atomic_numbers.get)
    hyper = {**default_hyperparameters(m.family), "element_types": elements}
    if kind == "graph" and m.scale_from_data:  # output de-normalisation from the training targets
        y = np.array([f.energy for f in frames])
        hyper.update(target_mean=float(y.mean()), target_std=float(max(y.std(), 1e-6)))
    hyper.update(m.hyperparameters)
    return Model(m.family, hyper, None, {"name": "trained", "origin": "trained with jaxmat train"})


def _prepare_params(cfg, model, params, frames, graphs):
    """Initial parameters (pretrained or fresh ``params``): refit element references; scale from data."""
    params = jax.tree_util.tree_map(np.asarray, params)
    if "energy_scale" not in params:  # structure -> property models scale through hyperparameters
        return params
    scale = dict(params["energy_scale"])
    if model.params is None and cfg.model.scale_from_data:
        forces = np.concatenate([f.forces.ravel() for f in frames if f.forces is not None])
        scale["scale"] = np.asarray(np.sqrt(np.mean(forces**2)), np.float32)
    params = {**params, "energy_scale": scale}
    if cfg.model.refit_element_refs:
        tmp = Model(model.family, model.hyperparameters, params, model.metadata)
        pred = predict(tmp, params, frames, cfg.data.graphs_per_batch, cfg.run.dtype, graphs=graphs)
        n = np.array([len(f.atoms) for f in frames if f.energy is not None])
        e_model = pred["e_pred"] * n
        refs = fit_element_refs([f for f in frames if f.energy is not None], model.element_types,
                                predicted=e_model, current=scale["element_refs"])
        params["energy_scale"] = {**scale, "element_refs": refs.astype(np.float32)}
    return params


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
    dtype = cfg.run.dtype
    with jax.enable_x64(dtype == "float64"):
        return _train(cfg, workdir, resume and has_ckpt, dtype, log)


def _train(cfg, workdir, resume, dtype, log):
    kind = output_kind(cfg)
    writer = _parallel.is_writer()  # process 0 of a multi-host run writes; the others compute
    if kind == "graph" and cfg.data.energy_key is None:
        raise ConfigError("config: data.energy_key is required for a structure -> property model (MEGNet): it names "
                          "the info key of the per-structure target; the calculator's total energy (eV) is not that "
                          "target (MEGNet-MP-2018.6.1-Eform predicts formation energy in eV/atom)")
    if kind == "graph" and cfg.ensemble.kind != "none":
        raise ConfigError("config: ensemble.kind must be 'none' for a structure -> property model (MEGNet): ensembles "
                          "are of potentials (energies, forces, stress)")
    train_frames, valid_frames = _load_data(cfg, kind)
    model = _make_model(cfg, train_frames, kind, valid_frames)
    deep = cfg.ensemble.kind == "deep"
    checks = StructureChecks(**cfg.data.structure_checks)
    g_train, g_valid = build_graphs(train_frames, model, checks), build_graphs(valid_frames, model, checks)
    if cfg.data.test and not resume:  # a test file the model cannot read fails now, not after training
        build_graphs(_read(cfg, cfg.data.test, kind), model, checks)
    budget = batch_budget(g_train + g_valid, cfg.data.graphs_per_batch)
    n_dev, layout = _parallel.resolve_devices(cfg, log)
    mesh = _parallel.make_mesh(n_dev) if n_dev > 1 else None
    if layout == "data":  # one chunk of each global batch per device, padded to one per-device budget
        dev_budget = _parallel.device_budget(g_train + g_valid, cfg.data.graphs_per_batch, n_dev)
        log(f"data parallel on {n_dev} devices: {cfg.data.graphs_per_batch} structures per step split over them")
    first = epoch_batches(train_frames[:1], g_train[:1], budget, 0, 0, False, dtype)[0]
    ema_decay = cfg.optim.ema_decay
    steps_per_epoch = len(epoch_groups(g_train, budget, cfg.run.seed, 0))
    tx = make_optimizer(cfg.optim, steps_per_epoch)

    def cast(tree):
        return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), tree)

    # the template fixes the structure for restoring; fresh runs fill it from the prepared params
    member = cast(model.params if model.params is not None else model.init_params(first.graph, init_seed(cfg)))
    proto = stack(cfg, [member] * (1 if cfg.ensemble.kind == "none" else cfg.ensemble.size))
    run_model = ensemble_template(cfg, model, member)  # the model itself, or an ensemble of its architecture
    # the model's constants (M3GNet's per-structure shift) are never trained, whatever the config says
    check_freeze(member, cfg.model.freeze, model.constant_params)
    check_ensemble_groups(cfg.ensemble, member)
    tx = with_frozen(tx, member if deep else proto, list(cfg.model.freeze) + list(model.constant_params))
    tx_init = jax.vmap(tx.init) if deep else tx.init  # a deep ensemble: one optimizer state per member
    state = {"params": proto, "ema": proto, "opt_state": tx_init(proto), "step": 0, "epoch": 0,
             "batch_in_epoch": 0, "lr_scale": 1.0, "best_val": np.inf, "bad_epochs": 0,
             "plateau_bad": 0, "epoch_sums": _zero_sums(), "seed": cfg.run.seed}
    if resume:
        state = load_checkpoint(workdir, state)
        log(f"resumed from {position(int(state['step']), int(state['epoch']), int(state['batch_in_epoch']))}")
    else:
        prepare = lambda p: cast(_prepare_params(cfg, model, p, train_frames, g_train))  # noqa: E731
        params = stack(cfg, initial_members(cfg, model, first.graph, prepare))
        ema0 = jax.tree_util.tree_map(jnp.zeros_like, params) if ema_decay > 0 else params
        state.update(params=params, ema=ema0, opt_state=tx_init(params))
        if writer:
            with open(workdir / "metrics.csv", "w", newline="") as fh:
                csv.writer(fh).writerow(CSV_FIELDS)
    if layout != "single":  # replicated (one model) or members split over the devices
        place = _parallel.replicated if layout == "data" else _parallel.member_sharded
        state.update({k: place(mesh, state[k]) for k in ("params", "ema", "opt_state")})
    if jax.process_count() > 1:  # every process must start from the same state (shared workdir, same data)
        multihost_utils.assert_equal((int(state["step"]), jax.device_get(state["params"])),
                                     "the processes start from different states: do they share one workdir "
                                     "(a checkpoint only some of them see) and the same data?")
    record_config(cfg, workdir, log, resume, write=writer)  # a refused resume stops every process
    if writer:
        _truncate_csv(workdir / "metrics.csv", int(state["epoch"]))

    train_step, eval_step = build_steps(cfg, run_model, tx, kind, mesh, layout)

    def checkpoint():
        if writer:
            save_checkpoint(workdir, state)

    def batch_of(idx):
        if layout == "data":
            return _parallel.stacked_batch(mesh, idx, train_frames, g_train, dev_budget, dtype)
        b = make_batch(idx, train_frames, g_train, budget, dtype)
        return member_batch(cfg, b, idx, masks, n_atoms) if deep else b
    masks = subsample_masks(cfg, len(train_frames))  # deep ensembles: the frames each member trains on
    n_atoms = [len(f.atoms) for f in train_frames]

    frozen = freeze_labels(proto, cfg.model.freeze)

    def ema_params(state):
        """Debiased EMA of the weights; frozen parameters stay bit-identical."""
        if ema_decay <= 0 or int(state["step"]) == 0:
            return state["params"]
        norm = 1.0 - ema_decay ** int(state["step"])
        return jax.tree_util.tree_map(lambda lab, e, p: p if lab == "frozen" else e / norm,
                                      frozen, state["ema"], state["params"])

    valid_batches = epoch_batches(valid_frames, g_valid, budget, 0, 0, False, dtype) if valid_frames else []
    if not valid_batches:
        log("no validation frames (data.valid_fraction 0): the last epoch's model is kept; no plateau, no early stopping")

    def early_stopped():  # read from the state, so a resumed run that had stopped early stays stopped
        patience = cfg.optim.early_stopping_patience
        return bool(patience) and int(state["bad_epochs"]) >= patience

    if resume and early_stopped():
        log(f"early stopping had ended this run after epoch {int(state['epoch'])}; nothing left to train")
    t_start = time.perf_counter()
    stop = False
    ended = "epochs"  # why training ended: "epochs", "early_stopping", "wall_time" or "max_steps" (results.json)
    while int(state["epoch"]) < cfg.optim.epochs and not stop and not early_stopped():
        epoch = int(state["epoch"])
        groups = epoch_groups(g_train, budget, cfg.run.seed, epoch)  # as epoch_batches, keeping the frame indices
        bar = _progress(cfg, len(groups), epoch)  # each batch is padded and sent to the devices just before its step
        for k, idx in enumerate(groups):
            if k < int(state["batch_in_epoch"]):
                continue
            batch = batch_of(idx)
            p, o, e, sums, health = train_step(state["params"], state["opt_state"], state["ema"], batch,
                                               jnp.asarray(state["lr_scale"], dtype))
            sums, health = jax.device_get((sums, health))
            if not healthy(health):
                checkpoint()  # the last good state: resumable, e.g. with a lower learning rate
                raise divergence(health, state, epoch, k, len(groups), groups[k], train_frames, cfg, workdir)
            acc = state["epoch_sums"]
            state.update(params=p, opt_state=o, ema=e, step=int(state["step"]) + 1, batch_in_epoch=k + 1,
                         epoch_sums={key: float(acc[key]) + float(sums[key]) for key in METRIC_KEYS})
            if bar is not None:
                bar.set_postfix(loss=f"{float(sums['loss_sum']):.4g}")
                bar.update(1)
            if int(state["step"]) % cfg.run.checkpoint_every_steps == 0:
                checkpoint()
            over_time = bool(cfg.run.max_wall_minutes) and time.perf_counter() - t_start > 60 * cfg.run.max_wall_minutes
            if cfg.run.max_wall_minutes and jax.process_count() > 1:  # process 0's clock decides for all
                over_time = bool(multihost_utils.broadcast_one_to_all(np.asarray(over_time)))
            if (cfg.run.max_steps is not None and int(state["step"]) >= cfg.run.max_steps) or over_time:
                log(f"stopping at step {int(state['step'])} ({'wall-time budget' if over_time else 'max_steps'}); resume with --resume")
                stop, ended = True, "wall_time" if over_time else "max_steps"
                break
        if bar is not None:
            bar.close()
        if stop and int(state["batch_in_epoch"]) < len(groups):
            checkpoint()
            break
        # epoch end: validation with the EMA weights, plateau, early stopping, best model
        val = {}
        for b in valid_batches:
            for key, v in jax.device_get(eval_step(ema_params(state), b)).items():
                val[key] = val.get(key, 0.0) + float(v)
        tm = summarize(state["epoch_sums"])
        if valid_batches:
            val_loss, vm = val["loss_sum"] / len(valid_batches), summarize(val)
            if not np.isfinite(val_loss):
                checkpoint()
                raise TrainingError(
                    f"epoch {epoch + 1}: the validation loss is {val_loss} although every parameter is finite: the model "
                    f"gives a non-finite prediction for a validation structure. This epoch's model was not kept as "
                    f"best; {saved_state(workdir)}")
            improved = val_loss < float(state["best_val"])
            state.update(best_val=min(val_loss, float(state["best_val"])),
                         bad_epochs=0 if improved else int(state["bad_epochs"]) + 1,
                         plateau_bad=0 if improved else int(state["plateau_bad"]) + 1)
            if int(state["plateau_bad"]) >= cfg.optim.plateau_patience:
                state.update(lr_scale=float(state["lr_scale"]) * cfg.optim.plateau_factor, plateau_bad=0)
        else:  # no validation: every epoch's model replaces the last
            val_loss, vm, improved = float("nan"), {}, True
        row = {"epoch": epoch + 1, "step": int(state["step"]), "lr_scale": float(state["lr_scale"]),
               "train_loss": float(state["epoch_sums"]["loss_sum"]) / len(groups), "val_loss": val_loss,
               **{f"train_{k}": v for k, v in tm.items() if k.endswith("mae")}, **{f"val_{k}": v for k, v in vm.items()},
               "wall_s": time.perf_counter() - t_start}
        if writer:
            with open(workdir / "metrics.csv", "a", newline="") as fh:
                csv.DictWriter(fh, CSV_FIELDS).writerow({k: row.get(k, "") for k in CSV_FIELDS})
        shown, which = (vm, f"val {val_loss:.4g}") if valid_batches else (tm, "(no validation) train")
        log(f"epoch {epoch + 1:4d}  train {row['train_loss']:.4g}  {which}  "
            f"E {shown.get('e_mae', float('nan')):.2f} meV/atom  F {shown.get('f_mae', float('nan')):.4f} eV/A"
            f"{'  *' if improved and valid_batches else ''}")
        if improved:
            best = jax.device_get(ema_params(state))  # every process computes, process 0 writes
            if writer:
                save_best(workdir, run_model, best, {"epoch": epoch + 1, **vm})
        state.update(epoch=epoch + 1, batch_in_epoch=0, epoch_sums=_zero_sums())
        checkpoint()
        if early_stopped():
            log(f"early stopping after {epoch + 1} epochs")
    if early_stopped():
        ended = "early_stopping"
    elif int(state["epoch"]) >= cfg.optim.epochs:  # a stop that fell on the last epoch's end ended nothing early
        ended = "epochs"
    test_frames = _read(cfg, cfg.data.test, kind) if cfg.data.test else []
    if jax.process_count() == 1:
        return finish(cfg, workdir, dtype, train_frames, valid_frames, test_frames, log, ended)
    # every process must hold the parameters process 0 wrote; then process 0 evaluates and writes the
    # results while the others wait for it (leaving early would end the job under srun)
    multihost_utils.assert_equal(jax.device_get(state["params"]), "the processes ended training with different parameters")
    results = finish(cfg, workdir, dtype, train_frames, valid_frames, test_frames, log, ended) if writer else {}
    multihost_utils.sync_global_devices("jaxmat train: results written")
    return results


def _zero_sums():
    return {k: 0.0 for k in METRIC_KEYS}


def _progress(cfg, total, epoch):
    if not cfg.run.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"epoch {epoch + 1}", leave=False)


def _truncate_csv(path: Path, epochs_done: int):
    """Drop metric rows of epochs after the restored checkpoint (a resumed run rewrites them)."""
    if not path.is_file():
        return
    rows = list(csv.reader(open(path)))
    keep = [rows[0]] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= epochs_done]
    text = io.StringIO(newline="")
    csv.writer(text).writerows(keep)
    atomic_write(path, text.getvalue().encode())  # a kill (or Ctrl-C) here keeps the old file whole
