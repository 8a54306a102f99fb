"""Training configuration: plain dataclasses read from JSON, validated, every field documented.

``jaxmat train --describe`` prints this documentation.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar

from jaxmat._checks import (Rule, at_least, between, check_fields, check_instance, each, non_negative, one_of,
                            positive, rules_text)
from jaxmat.errors import ConfigError
from jaxmat.graph import StructureChecks
from jaxmat.models import FAMILIES, check_hyperparameters
from jaxmat.uncertainty import check_musil_size


class _Section:
    """A config section checks its own fields when made (``ConfigError`` naming section and field)."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self):
        check_instance(self, f"config: {self.SECTION}")


@dataclasses.dataclass
class DataConfig(_Section):
    train: str = ""  #: training file (any ase.io format)
    valid: str | None = None  #: validation file; None: split ``valid_fraction`` off ``train``
    test: str | None = None  #: test file, evaluated on the best model at the end (optional)
    valid_fraction: float = 0.1  #: fraction of ``train`` used for validation when ``valid`` is None; 0: none (train on all, keep the last epoch's model)
    energy_key: str | None = None  #: info key of the energy (None: calculator results); for MEGNet-type models the per-structure target
    forces_key: str | None = None  #: arrays key of the forces (None: calculator results)
    stress_key: str | None = None  #: info key of the stress (None: calculator results)
    stress_factor: float = 1.0  #: multiplies stress read from ``stress_key`` (units/sign -> eV/A^3, ASE sign)
    require_stress: bool = False  #: fail on periodic frames without stress (else masked)
    graphs_per_batch: int = 4  #: structures per batch (the padding budget holds any such group)
    group_key: str = "config_type"  #: info key naming a frame's group, for loss.group_weights (mlearn: "group")
    structure_checks: dict = dataclasses.field(default_factory=dict)  #: thresholds of the structure checks, as jaxmat.graph.StructureChecks ({"min_distance_factor": 0.3} for data with very short contacts)

    SECTION: ClassVar[str] = "data"
    RULES: ClassVar[dict] = {"valid_fraction": between(0, 1, hi_open=True), "graphs_per_batch": at_least(1),
                             "stress_factor": Rule(lambda v: v != 0, "!= 0")}


@dataclasses.dataclass
class ModelConfig(_Section):
    init_from: str | None = None  #: pretrained name or bundle folder (relative to the config file) to fine-tune; None: from scratch
    init_member: int | None = None  #: init_from an ensemble bundle: fine-tune its member k (0 .. K-1; required there, refused for a single model)
    family: str = "M3GNet"  #: model family for training from scratch
    hyperparameters: dict = dataclasses.field(default_factory=dict)  #: overrides of the family defaults; with init_from only growth ({"max_l": 7}, {"nblocks": 4}; see grow_model)
    freeze: list[str] = dataclasses.field(default_factory=list)  #: parameter-path prefixes kept fixed ("conv_", "energy_scale/element_refs")
    refit_element_refs: bool = True  #: least-squares refit of per-element reference energies first
    scale_from_data: bool = True  #: from scratch: energy scale = RMS force component of the data

    SECTION: ClassVar[str] = "model"
    RULES: ClassVar[dict] = {"init_member": non_negative()}


@dataclasses.dataclass
class LossConfig(_Section):
    energy_weight: float = 1.0  #: weight of the energy-per-atom term (eV/atom)
    forces_weight: float = 1.0  #: weight of the force term (eV/A, per component)
    # 0.01, not M3GNet's 0.1: on mlearn Mo/Si (max_l 7, from scratch) 0.1 held the training force MAE
    # at 0.089/0.063 eV/A; 0.01 gave 0.078/0.058 and a lower test force error (the earlier mlearn search,
    # runs *_l7_s001, in git history before session 29) with the stress error level on Mo and 24 % higher on Si.
    stress_weight: float = 0.01  #: weight of the stress term (GPa, per component)
    kind: str = "huber"  #: "mse" or "huber"
    huber_delta: float = 0.01  #: Huber transition (in each term's unit)
    group_weights: dict[str, float] = dataclasses.field(default_factory=dict)  #: {group: weight} multiplying the energy, force and stress terms of the frames whose info[data.group_key] is that group (MACE's config_type_weights); others 1

    SECTION: ClassVar[str] = "loss"
    RULES: ClassVar[dict] = {"energy_weight": non_negative(), "forces_weight": non_negative(),
                             "stress_weight": non_negative(), "kind": one_of("mse", "huber"),
                             "huber_delta": positive(), "group_weights": each(non_negative())}


@dataclasses.dataclass
class OptimConfig(_Section):
    optimizer: str = "adamw"  #: "adam" or "adamw"
    learning_rate: float = 2e-3  #: peak learning rate
    weight_decay: float = 1e-5  #: AdamW decoupled weight decay
    weight_decay_exclude: list[str] = dataclasses.field(default_factory=lambda: ["energy_scale"])  #: parameter-path prefixes AdamW does not decay (the eV references and scale)
    epochs: int = 200  #: maximum number of epochs
    warmup_epochs: float = 2.0  #: linear warm-up length
    final_lr_factor: float = 0.01  #: cosine decay ends at learning_rate * final_lr_factor
    clip_norm: float = 10.0  #: global gradient-norm clipping (0: off)
    ema_decay: float = 0.99  #: exponential moving average of the weights used for evaluation (0: off)
    plateau_patience: int = 10  #: epochs without validation improvement before the lr is reduced
    plateau_factor: float = 0.5  #: lr multiplier on a plateau
    early_stopping_patience: int = 40  #: epochs without validation improvement before stopping (0: off)

    SECTION: ClassVar[str] = "optim"
    RULES: ClassVar[dict] = {"optimizer": one_of("adam", "adamw"), "learning_rate": non_negative(),
                             "weight_decay": non_negative(), "epochs": at_least(1), "warmup_epochs": non_negative(),
                             "final_lr_factor": between(0, 1), "clip_norm": non_negative(),
                             "ema_decay": between(0, 1, hi_open=True), "plateau_patience": at_least(1),
                             "plateau_factor": between(0, 1, lo_open=True), "early_stopping_patience": non_negative()}


@dataclasses.dataclass
class EnsembleConfig(_Section):
    kind: str = "none"  #: "none" (one model), "deep" (size full models trained side by side in one vmapped step) or "shallow" (one body, size readout heads)
    size: int | None = None  #: number of members K (>= 2); None: 5 for a deep or shallow ensemble (with kind "none" leave it unset)
    bootstrap: float = 1.0  #: deep: fraction of the training frames each member trains on (sub-sampled without replacement, seeded per member; the others get loss weight 0); 1: all
    heads: list[str] = dataclasses.field(default_factory=lambda: ["readout"])  #: shallow: parameter groups with one copy per member
    reinit: list[str] = dataclasses.field(default_factory=list)  #: fine-tuning: parameter groups drawn fresh per member (member k: seed run.init_seed + k), e.g. ["readout"]; shallow heads always are
    objective: str = "crps"  #: shallow: "crps" or "nll" of N(mean, std^2) over the heads, on energy/atom and force components (zero labels excluded), added to the loss of the mean
    uncertainty_weight: float = 1.0  #: shallow: weight of that term
    calibration: str = "nll"  #: scale of the spreads fit after training: "nll" (sqrt(mean(err^2/sigma^2))), "musil" (Musil/Imbalzano alpha, K >= 4) or "none"
    calibrate_on: str = "valid"  #: frames the scales are fit on: "valid" (held out from every member) or "out_of_sample" (deep with bootstrap < 1: each training frame scored by the members that did not train on it)

    SECTION: ClassVar[str] = "ensemble"
    RULES: ClassVar[dict] = {"kind": one_of("none", "deep", "shallow"), "size": at_least(2),
                             "bootstrap": between(0, 1, lo_open=True), "objective": one_of("crps", "nll"),
                             "uncertainty_weight": non_negative(), "calibration": one_of("nll", "musil", "none"),
                             "calibrate_on": one_of("valid", "out_of_sample")}
    DEFAULT_SIZE: ClassVar[int] = 5
    #: fields that only one kind of ensemble uses (any other kind would silently ignore them)
    ONLY_FOR: ClassVar[dict] = {"bootstrap": "deep", "heads": "shallow", "objective": "shallow",
                                "uncertainty_weight": "shallow"}

    def __post_init__(self):
        super().__post_init__()
        if self.kind != "none" and self.size is None:
            self.size = self.DEFAULT_SIZE


@dataclasses.dataclass
class RunConfig(_Section):
    seed: int = 0  #: seed of the validation split and the data order (and of initialisation unless init_seed is set)
    init_seed: int | None = None  #: seed of the initial parameters (None: seed); ensemble member k uses init_seed + k
    dtype: str = "float32"  #: "float32" or "float64"
    checkpoint_every_steps: int = 20  #: also checkpoint at every epoch end
    max_steps: int | None = None  #: stop after this many optimizer steps (tests, smoke runs)
    max_wall_minutes: float | None = None  #: stop (checkpointed, resumable) after this wall time
    progress: bool = True  #: tqdm progress bar with the live loss
    devices: int | None = None  #: devices the run trains on (None: all, of every process): batches split over them (one model) or members (a deep ensemble); the results do not depend on it

    SECTION: ClassVar[str] = "run"
    RULES: ClassVar[dict] = {"seed": non_negative(), "init_seed": non_negative(), "dtype": one_of("float32", "float64"),
                             "checkpoint_every_steps": at_least(1), "max_steps": at_least(1),
                             "max_wall_minutes": positive(), "devices": at_least(1)}


@dataclasses.dataclass
class TrainConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    ensemble: EnsembleConfig = dataclasses.field(default_factory=EnsembleConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "optim": OptimConfig, "run": RunConfig,
            "ensemble": EnsembleConfig}


def config_from_dict(d: dict, base: Path | None = None) -> TrainConfig:
    """Validate a nested dict: unknown sections or keys, values of the wrong type or out of range
    are ``ConfigError``s naming section, field, value and what is expected."""
    if not isinstance(d, dict):
        raise ConfigError(f"config must be a JSON object with sections {sorted(SECTIONS)}, got {type(d).__name__}")
    unknown = set(d) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config section(s) {sorted(unknown, key=str)}; expected {sorted(SECTIONS)}")
    parts = {}
    for name, cls in SECTIONS.items():
        sub = d.get(name, {})
        check_fields(cls, sub, f"config: {name}")
        parts[name] = cls(**{k: (list(v) if isinstance(v, tuple) else v) for k, v in sub.items()})
    cfg = TrainConfig(**parts)
    check_config(cfg)
    if base is not None:  # data paths are relative to the config file
        for key in ("train", "valid", "test"):
            value = getattr(cfg.data, key)
            if value and not Path(value).is_absolute():
                setattr(cfg.data, key, str((base / value).resolve()))
        init = cfg.model.init_from  # a bundle folder next to the config (a pretrained name stays a name)
        if init and not Path(init).is_absolute() and (base / init).is_dir():
            cfg.model.init_from = str((base / init).resolve())
    return cfg


def check_config(cfg: TrainConfig) -> None:
    """Rules that tie several fields together (each field alone is checked when its section is made)."""
    check_fields(StructureChecks, cfg.data.structure_checks, "config: data.structure_checks")
    if not cfg.data.train:
        raise ConfigError("config: data.train (the training file) is required")
    loss = cfg.loss
    if loss.energy_weight == loss.forces_weight == loss.stress_weight == 0:
        raise ConfigError("config: loss.energy_weight, forces_weight and stress_weight are all 0: nothing would be trained")
    if not cfg.model.init_from:  # from scratch: the family's own rules for its hyperparameters
        if cfg.model.family not in FAMILIES:
            raise ConfigError(f"config: model.family = {cfg.model.family!r}: expected one of {sorted(FAMILIES)}")
        check_hyperparameters(cfg.model.family, cfg.model.hyperparameters, "config: model.hyperparameters")
    if cfg.model.init_member is not None and not cfg.model.init_from:
        raise ConfigError(f"config: model.init_member = {cfg.model.init_member} picks a member of the ensemble "
                          "model.init_from names, but model.init_from is not set")
    ens = cfg.ensemble
    _check_ensemble_kind(ens)
    if ens.kind != "none":
        if ens.calibrate_on == "out_of_sample" and (ens.kind != "deep" or ens.bootstrap == 1):
            raise ConfigError("config: ensemble.calibrate_on = 'out_of_sample' needs a deep ensemble with "
                              "ensemble.bootstrap < 1 (otherwise every member trained on every training frame)")
        if ens.calibration == "musil":
            check_musil_size(ens.size, "config: ensemble.calibration = 'musil'", "ensemble.calibration = 'nll'")
        if ens.kind == "deep" and cfg.model.init_from and not ens.reinit and ens.bootstrap == 1:
            raise ConfigError("config: a deep ensemble fine-tuned from one model with ensemble.reinit [] and "
                              "ensemble.bootstrap 1 would train K identical members: re-draw some groups per member "
                              "(ensemble.reinit, e.g. [\"readout\"]) or sub-sample (ensemble.bootstrap < 1)")
        if ens.kind == "shallow" and cfg.loss.forces_weight == 0:
            raise ConfigError("config: a shallow ensemble needs loss.forces_weight > 0: trained on energies only, "
                              "its force spreads are not calibrated")


def _default(cls, name):
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _check_ensemble_kind(ens: EnsembleConfig) -> None:
    """No ensemble field that the chosen kind ignores may be set (it would be silently ignored):
    with kind "none" none at all, and the deep-only and shallow-only ones only with their kind."""
    changed = [f.name for f in dataclasses.fields(ens)
               if f.name != "kind" and getattr(ens, f.name) != _default(type(ens), f.name)]
    if ens.kind == "none" and changed:
        name = changed[0]
        what = f"an ensemble of {ens.size}" if name == "size" else "an ensemble"
        raise ConfigError(f"config: ensemble.{name} = {getattr(ens, name)!r} is set but ensemble.kind is 'none' (one model "
                          f"would be trained and ensemble.{name} ignored): set ensemble.kind to 'deep' or 'shallow' "
                          f"to train {what}, or remove ensemble.{name}")
    if ens.kind == "none":
        return
    if ens.size is None:  # kind set after the section was made
        ens.size = ens.DEFAULT_SIZE
    for name in changed:
        only = ens.ONLY_FOR.get(name)
        if only and only != ens.kind:
            why = {"deep": "the shallow heads share one body that trains on every frame",
                   "shallow": "a deep ensemble has one copy of every parameter group per member"}[only]
            raise ConfigError(f"config: ensemble.{name} = {getattr(ens, name)!r} applies to {only} ensembles only "
                              f"({why}), and ensemble.kind is {ens.kind!r}: remove ensemble.{name}, or set "
                              f"ensemble.kind to {only!r}")
    if ens.kind == "shallow" and not ens.heads:
        raise ConfigError("config: ensemble.heads = []: a shallow ensemble needs at least one parameter group with "
                          "one copy per member (e.g. [\"readout\"])")


def load_config(path) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        d = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    try:
        return config_from_dict(d, base=path.parent)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def describe() -> str:
    """Every config field with its default and meaning (from the source comments)."""
    import inspect

    lines = []
    for name, cls in SECTIONS.items():
        lines.append(f"[{name}]")
        allowed = rules_text(cls)
        src = inspect.getsource(cls).splitlines()
        for line in src:
            if "#:" in line and ":" in line.split("#:")[0]:
                decl, doc = line.split("#:")
                field = decl.split(":")[0].strip()
                lines.append(f"  {decl.strip():60s} {doc.strip()} [{allowed.get(field, '')}]")
    lines += ["[command line: jaxmat train CONFIG ...]",
              f"  {'--epochs N':60s} overrides optim.epochs (a short trial: --epochs 2)",
              f"  {'--max-minutes M':60s} overrides run.max_wall_minutes (stop after M minutes of training, "
              "checkpointed; the best model so far is evaluated; --resume continues)",
              f"  {'--workdir DIR':60s} output folder (default: the config path without .json)",
              f"  {'--resume':60s} continue the checkpoint in the workdir (Ctrl-C keeps the last checkpoint and "
              "prints this command)"]
    return "\n".join(lines)
