"""Bad training configs are ConfigErrors naming section, field, value and expectation; training that
diverges stops at once and saves nothing non-finite; --resume and interrupted runs say what they do."""

import json
import math
import re

import ase.io
import flax.serialization
import jax
import numpy as np
import pytest

from helpers import tiny_train_config
from jaxmat import cli
from jaxmat.data import read_frames
from jaxmat.errors import CheckpointError, ConfigError, DatasetError
from jaxmat.train import config_from_dict, load_config, train_and_evaluate

_BASE = {"data": {"valid_fraction": 0.25, "graphs_per_batch": 2},
         "optim": {"epochs": 2, "learning_rate": 5e-3, "warmup_epochs": 0.5},
         "run": {"progress": False, "checkpoint_every_steps": 2}}
OK = {"data": {"train": "x.extxyz"}}

# (config dict, message regex)
CONFIGS = {
    "freeze a string": ({"model": {"freeze": "energy_scale/element_refs"}},
                        r"config: model.freeze = 'energy_scale/element_refs' \(str\): expected a list of strings"),
    "epochs a string": ({"optim": {"epochs": "2"}}, r"config: optim.epochs = '2' \(str\): expected an integer, >= 1"),
    "epochs true": ({"optim": {"epochs": True}}, r"optim.epochs = True \(bool\): expected an integer"),
    "epochs 0": ({"optim": {"epochs": 0}}, r"optim.epochs = 0 \(int\): expected >= 1"),
    "learning rate a string": ({"optim": {"learning_rate": "5e-3"}},
                               r"optim.learning_rate = '5e-3' \(str\): expected a finite number, >= 0"),
    "negative learning rate": ({"optim": {"learning_rate": -1e-3}}, r"optim.learning_rate = -0.001 \(float\): expected >= 0"),
    "NaN learning rate": ({"optim": {"learning_rate": math.nan}}, r"optim.learning_rate = nan .*finite number"),
    "float graphs_per_batch": ({"data": {"graphs_per_batch": 2.5}}, r"data.graphs_per_batch = 2.5 \(float\): expected an integer"),
    "list for a section": ({"optim": [1e-3, 100]}, r"config: optim must be a mapping \(JSON object\) of settings, got list"),
    "negative energy weight": ({"loss": {"energy_weight": -1}}, r"loss.energy_weight = -1 \(int\): expected >= 0"),
    "all weights zero": ({"loss": {"energy_weight": 0, "forces_weight": 0, "stress_weight": 0}}, "are all 0"),
    "negative group weight": ({"loss": {"group_weights": {"Surface": -2}}}, r"loss.group_weights = .*each >= 0"),
    "group weights a list": ({"loss": {"group_weights": ["Surface", 5]}}, r"group_weights = .*mapping of names to finite numbers"),
    "unknown loss kind": ({"loss": {"kind": "l3"}}, r"loss.kind = 'l3' .*one of 'mse', 'huber'"),
    "valid_fraction 1": ({"data": {"valid_fraction": 1.0}}, r"data.valid_fraction = 1.0 .*in \[0, 1\)"),
    "float16": ({"run": {"dtype": "float16"}}, r"run.dtype = 'float16'"),
    "ema_decay 1": ({"optim": {"ema_decay": 1.0}}, r"optim.ema_decay = 1.0"),
    "max_steps 0": ({"run": {"max_steps": 0}}, r"run.max_steps = 0"),
    "negative wall time": ({"run": {"max_wall_minutes": -5}}, r"run.max_wall_minutes = -5"),
    "negative seed": ({"run": {"seed": -1}}, r"run.seed = -1"),
    "progress a string": ({"run": {"progress": "yes"}}, r"run.progress = 'yes' \(str\): expected true or false"),
    "exclude a string": ({"optim": {"weight_decay_exclude": "energy_scale"}}, r"weight_decay_exclude = .*list of strings"),
    "zero stress factor": ({"data": {"stress_factor": 0}}, r"data.stress_factor = 0 .*!= 0"),
    "unknown key": ({"data": {"batchsize": 3}}, r"config: data: unknown key\(s\) \['batchsize'\]"),
    "unknown section": ({"optimiser": {}}, r"unknown config section\(s\) \['optimiser'\]"),
    "unknown family": ({"model": {"family": "SchNet"}}, r"model.family = 'SchNet': expected one of \['M3GNet', 'MEGNet'.*\]"),
    "hyperparameter a string": ({"model": {"hyperparameters": {"units": "64"}}},
                                r"config: model.hyperparameters.units = '64' \(str\): expected an integer"),
    "unknown hyperparameter": ({"model": {"hyperparameters": {"dropout": 0.1}}}, r"hyperparameters: unknown key\(s\) \['dropout'\]"),
    "three-body cutoff beyond the cutoff": ({"model": {"hyperparameters": {"threebody_cutoff": 5.5}}},
                                           "threebody_cutoff 5.5 A exceeds cutoff 5.0 A"),
    "structure checks of the wrong type": ({"data": {"structure_checks": {"min_distance_factor": "0.3"}}},
                                           r"data.structure_checks.min_distance_factor = '0.3' \(str\)"),
    "unknown structure check": ({"data": {"structure_checks": {"min_distance": 0.3}}},
                                r"data.structure_checks: unknown key\(s\) \['min_distance'\]"),
    "no training file": ({"data": {"train": ""}}, "data.train .* is required"),
    # an ensemble field without ensemble.kind, or one the kind does not use, would be silently ignored
    "ensemble size without kind": ({"ensemble": {"size": 5}}, r"ensemble.size = 5 is set but ensemble.kind is 'none' "
                                   r"\(one model would be trained.*set ensemble.kind to 'deep' or 'shallow'"),
    "bootstrap of a shallow ensemble": ({"ensemble": {"kind": "shallow", "bootstrap": 0.5}},
                                        r"ensemble.bootstrap = 0.5 applies to deep ensembles only"),
    "heads of a deep ensemble": ({"ensemble": {"kind": "deep", "heads": ["readout", "conv_0"]}},
                                 r"ensemble.heads = .* applies to shallow ensembles only"),
    "no heads": ({"ensemble": {"kind": "shallow", "heads": []}}, r"ensemble.heads = \[\]: a shallow ensemble needs"),
    "init_member without init_from": ({"model": {"init_member": 0}}, r"model.init_member = 0 .*init_from is not set"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_bad_config_fields(case):
    change, match = CONFIGS[case]
    d = {section: {**OK.get(section, {}), **values} if isinstance(values, dict) else values
         for section, values in {**OK, **change}.items()}
    with pytest.raises(ConfigError, match=match):
        config_from_dict(d)


def test_config_sections_check_themselves():
    """Python users who build sections directly get the same checks (and train_and_evaluate re-checks
    the rules across sections)."""
    from jaxmat.train._config import LossConfig, OptimConfig, TrainConfig

    with pytest.raises(ConfigError, match=r"config: optim.learning_rate = '5e-3'"):
        OptimConfig(learning_rate="5e-3")
    cfg = TrainConfig()
    cfg.data.train = "x.extxyz"
    cfg.loss = LossConfig(energy_weight=0, forces_weight=0, stress_weight=0)
    with pytest.raises(ConfigError, match="are all 0"):
        train_and_evaluate(cfg, "/nonexistent/never-made")


@pytest.mark.parametrize("content, match", [(None, "does not exist"), (b"\xff\xfe{", "is not valid JSON"),
                                            (b"{'data': 1}", "is not valid JSON"), (b"[1, 2]", "must be a JSON object")])
def test_bad_config_files(tmp_path, content, match):
    path = tmp_path / "cfg.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        load_config(path)
    assert config_from_dict(OK).optim.learning_rate == 2e-3  # and a good one passes


def _config(path, **over):
    return tiny_train_config(path, _BASE, **over)


def _ge_frames(path):
    """Two labelled Ge cells (an element the Si training file does not have)."""
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for k in range(2):
        a = bulk("Ge", "diamond", 5.66, cubic=True)
        a.rattle(0.05, seed=k)
        a.calc = SinglePointCalculator(a, energy=-36.0, forces=np.zeros((8, 3)), stress=np.zeros(6))
        frames.append(a)
    ase.io.write(path, frames)
    return path


@pytest.mark.parametrize("case", ["freeze typo", "freeze everything", "element only in validation",
                                  "property model without its key", "shallow head typo"])
def test_configs_refused_once_the_model_is_known(tmp_path, labelled_file, case):
    over, error, match = {
        "freeze typo": ({"model": {"freeze": ["energy_scales/element_refs", "conv_", "conv_7"]}}, ConfigError,
                        r"model.freeze \['energy_scales/element_refs', 'conv_7'\] names no parameter"),
        "freeze everything": ({"model": {"freeze": ["node_embedding", "edge_embedding", "conv_", "three_body_",
                                                    "readout", "energy_scale"]}}, ConfigError, "freezes every parameter"),
        "element only in validation": ({"data": {"valid": str(_ge_frames(tmp_path / "ge.extxyz"))}}, DatasetError,
                                       r"ge.extxyz:0: element\(s\) \['Ge'\] occur in validation frames but in no training"),
        "property model without its key": ({"model": {"family": "MEGNet", "hyperparameters": {}}}, ConfigError,
                                           "data.energy_key is required for a structure -> property model"),
        "shallow head typo": ({"ensemble": {"kind": "shallow", "size": 2, "heads": ["nohead"]}}, ConfigError,
                              r"ensemble.heads \['nohead'\] names no parameter group of this model: heads are whole "
                              r"top-level groups, one of \[.*'readout'.*\]"),
    }[case]
    cfg = config_from_dict(_config(labelled_file, **over))
    with pytest.raises(error, match=match):
        train_and_evaluate(cfg, tmp_path / "run", log=lambda *_: None)


def test_forces_in_the_wrong_unit_are_flagged(tmp_path, labelled_file):
    frames = ase.io.read(labelled_file, ":2")
    from ase.calculators.singlepoint import SinglePointCalculator

    for a in frames:
        r = a.calc.results
        a.calc = SinglePointCalculator(a, energy=r["energy"] * 1000, forces=r["forces"] * 1000)
    ase.io.write(tmp_path / "mev.extxyz", frames)
    with pytest.warns(UserWarning, match=r"force components up to .* eV/A .*are the labels in meV/A"):
        read_frames(tmp_path / "mev.extxyz")


def test_diverging_training_stops_at_the_first_non_finite_step(tmp_path, labelled_file, capsys):
    """An absurd learning rate blows the weights up: the CLI stops with exit 2 at the first non-finite
    step and names it; the last good state is checkpointed (parameters and EMA finite) and resumable."""
    cfg = _config(labelled_file, optim={"learning_rate": 1e12, "clip_norm": 0, "optimizer": "adam"},
                  run={"checkpoint_every_steps": 100})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with jax.debug_nans(False):
        code = cli.main(["train", str(tmp_path / "cfg.json"), "--workdir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "training diverged at step" in err and "nothing non-finite was saved" in err, err
    assert "This batch holds" in err and "si_labelled.extxyz:" in err
    step = int(re.search(r"diverged at step (\d+)", err).group(1))
    raw = flax.serialization.msgpack_restore((tmp_path / "run" / "checkpoint.msgpack").read_bytes())["state"]
    assert int(raw["step"]) == step - 1  # the last good state, written although checkpoint_every_steps is 100
    for key in ("params", "ema"):
        leaves = jax.tree_util.tree_leaves(raw[key])
        assert leaves and all(np.isfinite(x).all() for x in leaves), key
    assert not (tmp_path / "run" / "best_model").exists()


@pytest.mark.slow  # minutes on 2 cores: outside the default suite (-m slow)
def test_resume_and_interrupted_runs_say_what_they_do(tmp_path, labelled_file, capsys):
    run = tmp_path / "run"
    d = _config(labelled_file, run={"max_steps": 1})
    (tmp_path / "cfg.json").write_text(json.dumps(d))
    # --resume with nothing to resume: says so and starts; one step is less than an epoch: no best model
    assert cli.main(["train", str(tmp_path / "cfg.json"), "--workdir", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "holds no checkpoint.msgpack, so there is nothing to continue: starting a new run" in out
    assert "no best model was written" in out and "best model:" not in out and not (run / "best_model").exists()
    # a killed run's half-written files are removed; a changed config is reported on resume
    (run / ".checkpoint.msgpack.x1y2.tmp").write_bytes(b"half")
    (run / "best_model.tmp").mkdir()
    msgs = []
    cfg2 = config_from_dict(_config(labelled_file, optim={"epochs": 1}))
    train_and_evaluate(cfg2, run, resume=True, log=msgs.append)
    assert any("removed 2 file(s)" in m for m in msgs) and not (run / "best_model.tmp").exists()
    assert any("optim.epochs: 2 -> 1" in m and "run.max_steps: 1 -> None" in m for m in msgs), msgs
    assert (run / "best_model").is_dir()
    # a kill between the two renames of the best-model swap: the complete old copy is put back
    (run / "best_model").rename(run / "best_model.old")
    (run / "best_model.tmp").mkdir()
    msgs.clear()
    train_and_evaluate(config_from_dict(_config(labelled_file, optim={"epochs": 1})), run, resume=True, log=msgs.append)
    assert any("restored best_model from best_model.old" in m for m in msgs), msgs
    assert (run / "best_model").is_dir() and not (run / "best_model.old").exists()
    # a change that would replay different batches is refused, before config.json is touched
    before = (run / "config.json").read_text()
    with pytest.raises(CheckpointError, match=r"cannot resume with data.graphs_per_batch: 2 -> 3"):
        train_and_evaluate(config_from_dict(_config(labelled_file, data={"graphs_per_batch": 3}, optim={"epochs": 1})),
                           run, resume=True, log=lambda *_: None)
    # so is a corrupt checkpoint
    (run / "checkpoint.msgpack").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot be decoded"):
        train_and_evaluate(config_from_dict(_config(labelled_file, optim={"epochs": 5})), run, resume=True,
                           log=lambda *_: None)
    assert (run / "config.json").read_text() == before
