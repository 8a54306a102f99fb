"""Per-group loss weights (``loss.group_weights``, MACE's config_type_weights): each frame's
energy, force and stress terms are multiplied by its group's weight; the error metrics are not."""

import csv

import ase.io
import jax
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from helpers import tiny_train_config
from jaxmat.data import batch_budget, build_graphs, epoch_batches, read_frames
from jaxmat.train import config_frames, config_from_dict, loss_and_metrics, train_and_evaluate
from jaxmat.train._config import LossConfig


@pytest.fixture(scope="module")
def grouped_file(tmp_path_factory):
    """Six rattled Si cells with random labels, tagged info['config_type'] "bulk" or "hot"."""
    rng = np.random.default_rng(3)
    frames = []
    for k in range(6):
        a = bulk("Si", "diamond", 5.43, cubic=True)
        a.rattle(0.05 + 0.05 * (k % 2), seed=k)
        a.info["config_type"] = "hot" if k % 2 else "bulk"
        a.calc = SinglePointCalculator(a, energy=-43.0 + rng.normal(), forces=rng.normal(size=(8, 3)),
                                       stress=0.01 * rng.normal(size=6))
        frames.append(a)
    path = tmp_path_factory.mktemp("groups") / "si_groups.extxyz"
    ase.io.write(path, frames)
    return path


_BASE = {"data": {"valid_fraction": 0, "graphs_per_batch": 3},
         "optim": {"epochs": 1, "learning_rate": 1e-3, "warmup_epochs": 0.5, "weight_decay": 0.0},
         "run": {"progress": False}}


def _config(path, **over):
    return tiny_train_config(path, _BASE, **over)


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_loss_is_linear_in_the_frame_weights(model, grouped_file):
    frames = read_frames(grouped_file)[:3]
    graphs = build_graphs(frames, model)
    budget = batch_budget(graphs, 3)
    cfg = LossConfig(kind="mse", stress_weight=1.0)

    def loss(weights):
        fr = [f._replace(weight=w) for f, w in zip(frames, weights)]
        batch = epoch_batches(fr, graphs, budget, 0, 0, shuffle=False, dtype="float64")[0]
        out, sums = loss_and_metrics(model.params, batch, model.apply, cfg)
        return float(out), {k: float(v) for k, v in sums.items() if k != "loss_sum"}

    with jax.enable_x64(True):
        base, base_sums = loss((1.0, 1.0, 1.0))
        parts = [loss(w)[0] for w in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))]
        weighted, weighted_sums = loss((3.0, 0.5, 0.0))
    assert min(parts) > 0
    assert base == pytest.approx(sum(parts), rel=1e-10)
    assert weighted == pytest.approx(3.0 * parts[0] + 0.5 * parts[1], rel=1e-10)
    assert weighted_sums == base_sums  # the MAE/RMSE sums stay unweighted


def test_group_weights_reach_the_training_frames(grouped_file):
    cfg = config_from_dict(_config(grouped_file, loss={"group_weights": {"hot": 4.0}}))
    frames = config_frames(cfg, "train")
    assert [f.weight for f in frames] == [1.0, 4.0] * 3
    other_key = config_from_dict(_config(grouped_file, data={"group_key": "group"}, loss={"group_weights": {"hot": 4.0}}))
    with pytest.raises(ValueError, match=r"no frame .* info\['group'\].*groups present: \[\]"):
        config_frames(other_key, "train")
    typo = config_from_dict(_config(grouped_file, loss={"group_weights": {"Hot": 4.0}}))
    with pytest.raises(ValueError, match=r"\['Hot'\].*groups present: \['bulk', 'hot'\]"):
        config_frames(typo, "train")
    for bad in ({"hot": -1.0}, {"hot": float("nan")}, {"hot": "4"}, [4.0]):
        with pytest.raises(ValueError, match="group_weights"):
            config_from_dict(_config(grouped_file, loss={"group_weights": bad}))


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
@pytest.mark.filterwarnings("ignore:Data has no positive values")  # the log-scale loss curve of an all-zero loss
def test_zero_weights_give_a_zero_training_loss(tmp_path, grouped_file):
    """End to end: with every group weighted 0 the trainer's loss is 0 while its errors are not."""
    cfg = config_from_dict(_config(grouped_file, loss={"group_weights": {"hot": 0.0, "bulk": 0.0}}))
    train_and_evaluate(cfg, tmp_path, log=lambda m: None)
    with open(tmp_path / "metrics.csv") as fh:
        row = list(csv.DictReader(fh))[-1]
    assert float(row["train_loss"]) == 0.0 and float(row["train_f_mae"]) > 0.1
