"""What a training run trains on and starts from: its labelled frames (read, group-weighted and
split), its model (fresh, pretrained, one member of an ensemble bundle, or grown) and the initial
parameters (element references refitted, energy scale from the data)."""

from __future__ import annotations

import jax
import numpy as np
from ase.data import atomic_numbers

from jaxmat.data import read_frames, split
from jaxmat.errors import ConfigError, DatasetError
from jaxmat.models import FAMILIES, Ensemble, Model, default_hyperparameters, grow_model, load_model
from jaxmat.train._evaluate import predict_frames
from jaxmat.train._refs import fit_element_refs
from jaxmat.train._steps import init_seed


def output_kind(mcfg) -> str:
    """"atoms" (potential: energy, forces, stress labels) or "graph" (one target per structure) for
    the model section ``mcfg`` of a config."""
    if mcfg.init_from:
        return init_model(mcfg).output_kind
    if mcfg.family not in FAMILIES:
        raise ValueError(f"unknown model family {mcfg.family!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[mcfg.family].output_kind


def init_model(mcfg) -> Model:
    """The model ``model.init_from`` names; of an ensemble bundle, its member ``model.init_member``."""
    base = load_model(mcfg.init_from)
    if not isinstance(base, Ensemble):
        if mcfg.init_member is not None:
            raise ConfigError(f"config: model.init_member = {mcfg.init_member}, but model.init_from {mcfg.init_from!r} "
                              "is a single model, not an ensemble: remove model.init_member")
        return base
    if mcfg.init_member is None or mcfg.init_member >= base.size:
        got = "is not set" if mcfg.init_member is None else f"= {mcfg.init_member} is out of range"
        raise ConfigError(f"config: model.init_from {mcfg.init_from!r} is a {base.kind} ensemble of {base.size} members "
                          f"and model.init_member {got}: set model.init_member to a member 0 .. {base.size - 1} to "
                          "fine-tune it (fine-tune several into a new ensemble with ensemble.kind 'deep')")
    meta = {k: v for k, v in base.metadata.items() if k != "members"}
    meta["name"] = f"{base.name}[{mcfg.init_member}]"  # recorded as the fine-tuned model's init_from
    return Model(base.family, base.hyperparameters, base.member_params(mcfg.init_member), meta)


def read_labelled(dcfg, path, kind):
    """The labelled frames of ``path``, read with the label keys of the data section ``dcfg``."""
    require = ("energy",) if kind == "graph" else ("energy", "forces") + (("stress",) if dcfg.require_stress else ())
    return read_frames(path, energy_key=dcfg.energy_key, forces_key=dcfg.forces_key, stress_key=dcfg.stress_key,
                       stress_factor=dcfg.stress_factor, require=require)


def _group_weighted(dcfg, weights, frames, check: bool = True):
    """``frames`` with ``Frame.weight`` from ``weights`` (``loss.group_weights``). ``check``: a listed
    group no frame belongs to is an error (a misspelt group would otherwise weight nothing)."""
    key = dcfg.group_key
    if not weights:
        return frames
    groups = [str(f.atoms.info[key]) if key in f.atoms.info else None for f in frames]
    present = {g for g in groups if g is not None}
    missing = sorted(set(weights) - present)
    if check and missing:
        raise ValueError(f"loss.group_weights names group(s) {missing} that no frame of {dcfg.train} has in "
                         f"info[{key!r}] (data.group_key); groups present: {sorted(present)}")
    return [f._replace(weight=float(weights.get(g, 1.0))) for f, g in zip(frames, groups)]


def load_data(cfg, kind):
    """(training frames, validation frames) of the config ``cfg``: group-weighted, split."""
    d, weights = cfg.data, cfg.loss.group_weights
    frames = _group_weighted(d, weights, read_labelled(d, d.train, kind))
    if d.valid:
        return frames, _group_weighted(d, weights, read_labelled(d, d.valid, kind), check=False)
    if d.valid_fraction == 0:  # explicit: train on every frame, keep the last epoch's model
        return frames, []
    tr, va = split(len(frames), d.valid_fraction, cfg.run.seed)
    if len(va) == 0:
        raise ValueError("no validation frames: set data.valid or a larger data.valid_fraction")
    return [frames[i] for i in tr], [frames[i] for i in va]


def config_frames(cfg, which: str) -> list:
    """The labelled frames a run of ``cfg`` trains, validates or tests on (``which``: "train",
    "valid" or "test"), read with the config's label keys and split exactly as
    ``train_and_evaluate`` splits them. "valid" is [] when ``data.valid_fraction`` is 0 and "test"
    is [] without ``data.test``."""
    kind = output_kind(cfg.model)
    if which == "test":
        return read_labelled(cfg.data, cfg.data.test, kind) if cfg.data.test else []
    if which not in ("train", "valid"):
        raise ValueError(f"which must be 'train', 'valid' or 'test', not {which!r}")
    return load_data(cfg, kind)[which == "valid"]


def make_model(mcfg, rcfg, frames, kind, valid_frames=()) -> Model:
    """The model of the model section ``mcfg`` (``rcfg``: the run section, for the seed of grown
    parameters): pretrained (``init_from``, grown by ``hyperparameters``) or fresh, without
    parameters, for the elements of the training ``frames``."""
    if mcfg.init_from:  # hyperparameters may only grow the pretrained model (function-preserving)
        base = init_model(mcfg)
        return grow_model(base, seed=init_seed(rcfg), **mcfg.hyperparameters) if mcfg.hyperparameters else base
    symbols = {s for f in frames for s in f.atoms.get_chemical_symbols()}
    for f in valid_frames:  # an element no training frame has would keep its random initial weights
        unseen = sorted(set(f.atoms.get_chemical_symbols()) - symbols)
        if unseen:
            raise DatasetError(f"{f.source}: element(s) {unseen} occur in validation frames but in no training frame: "
                               "a model trained from scratch would predict them with untrained weights")
    elements = sorted(symbols, key=atomic_numbers.get)
    hyper = {**default_hyperparameters(mcfg.family), "element_types": elements}
    if kind == "graph" and mcfg.scale_from_data:  # output de-normalisation from the training targets
        y = np.array([f.energy for f in frames])
        hyper.update(target_mean=float(y.mean()), target_std=float(max(y.std(), 1e-6)))
    hyper.update(mcfg.hyperparameters)
    return Model(mcfg.family, hyper, None, {"name": "trained", "origin": "trained with jaxmat train"})


def prepare_params(cfg, model, params, frames, graphs):
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
        pred = predict_frames(tmp, params, frames, cfg.data.graphs_per_batch, cfg.run.dtype, graphs=graphs)
        n = np.array([len(f.atoms) for f in frames if f.energy is not None])
        e_model = pred["e_pred"] * n
        refs = fit_element_refs([f for f in frames if f.energy is not None], model.element_types,
                                predicted=e_model, current=scale["element_refs"])
        params["energy_scale"] = {**scale, "element_refs": refs.astype(np.float32)}
    return params
