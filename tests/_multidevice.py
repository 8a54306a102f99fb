"""Runs in a subprocess of tests/test_distributed.py with XLA_FLAGS=--xla_force_host_platform_device_count=4,
so that no other test sees four CPU devices. ``python _multidevice.py CASE TMPDIR DATA`` prints one
JSON line with the numbers the test checks."""

import json
import sys
from pathlib import Path

import jaxmat

jaxmat.retain_host_memory()
import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxmat.train import config_from_dict, train_and_evaluate  # noqa: E402
from helpers import TINY, checkpoint_state  # noqa: E402  (this script runs from tests/)


def config(data, **run):
    return config_from_dict({
        "model": {"hyperparameters": TINY},
        "data": {"train": data, "valid_fraction": 0.25, "graphs_per_batch": 4},
        "optim": {"epochs": 10, "learning_rate": 5e-3, "warmup_epochs": 0.5},
        "run": {"progress": False, "checkpoint_every_steps": 5, "dtype": "float64", **run}})


def max_diff(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    return max(float(np.max(np.abs(np.asarray(x, float) - np.asarray(y, float)))) for x, y in zip(la, lb))


def training(tmp, data):
    """20 steps on 4 devices and on 1; and a checkpoint written on 4 devices resumed on 1 (and back)."""
    out = {"devices": jax.device_count()}
    train_and_evaluate(config(data, devices=1, max_steps=20), tmp / "one", log=lambda *a: None)
    train_and_evaluate(config(data, devices=4, max_steps=20), tmp / "four", log=lambda *a: None)
    one, four = checkpoint_state(tmp / "one"), checkpoint_state(tmp / "four")
    out["steps"] = [int(one["step"]), int(four["step"])]
    out["four_vs_one"] = max_diff(one["params"], four["params"])
    out["opt_four_vs_one"] = max_diff(one["opt_state"], four["opt_state"])
    out["scale"] = max(float(np.max(np.abs(x))) for x in jax.tree_util.tree_leaves(one["params"]))
    for first, then in ((4, 1), (1, 4)):
        w = tmp / f"resume_{first}_{then}"
        train_and_evaluate(config(data, devices=first, max_steps=10), w, log=lambda *a: None)
        train_and_evaluate(config(data, devices=then, max_steps=20), w, resume=True, log=lambda *a: None)
        out[f"resume_{first}_{then}"] = max_diff(one["params"], checkpoint_state(w)["params"])
    return out


def deep_training(tmp, data):
    """A deep ensemble of 4 members trained with its members on 4 devices and on 1."""
    for n in (1, 4):
        cfg = config(data, devices=n, max_steps=6)
        cfg.ensemble.kind, cfg.ensemble.size = "deep", 4
        train_and_evaluate(cfg, tmp / f"deep{n}", log=lambda *a: None)
    return {"deep_four_vs_one": max_diff(checkpoint_state(tmp / "deep1")["params"], checkpoint_state(tmp / "deep4")["params"])}


def ensemble_prediction(tmp, data):
    """An ensemble of 4 (differently initialised) small M3GNets: its members' energies, forces and
    stress with the members split over 4 devices equal those on one device, functionally and
    through JaxmatCalculator(ensemble_devices=4)."""
    import ase.io

    from jaxmat.calculators import JaxmatCalculator
    from jaxmat.graph import atoms_to_graph, bucket_sizes, graph_sizes, pad_graph
    from jaxmat.models import Model, stack_members
    from jaxmat.models import default_hyperparameters

    atoms = ase.io.read(data, 0)
    hyper = {**default_hyperparameters("M3GNet"), **TINY, "element_types": ["Si"]}
    g0 = atoms_to_graph(atoms, 5.0, 4.0)
    g = jax.tree_util.tree_map(jax.numpy.asarray, pad_graph(g0, bucket_sizes(graph_sizes(g0))))
    base = Model("M3GNet", hyper, None, {"name": "tiny"})
    members = [Model("M3GNet", hyper, base.init_params(g, seed=k), {"name": f"tiny{k}"}) for k in range(4)]
    ens = stack_members(members)
    fn = jax.jit(lambda p, gg: ens.member_results(p, gg, True, "vmap"))
    plain = jax.device_get(fn(ens.params, g))
    res = fn(ens.shard_members(devices=4), g)
    out = {"prediction_shards": len(res["forces"].sharding.device_set),
           "sharded_vs_plain": max_diff(plain, jax.device_get(res)),
           "member_spread": float(np.std(plain["energy"]))}
    results = []
    for n in (1, 4):
        atoms.calc = JaxmatCalculator(ens, dtype="float64", ensemble_devices=n)
        results.append({"f": atoms.get_forces(), "s": atoms.get_stress(), "fs": atoms.calc.results["forces_std"]})
    out["calculator_4_vs_1"] = max_diff(results[0], results[1])
    return out


def md(tmp, data):
    """Six Langevin replicas (rattled Si8 cells and one NaCl8, own seeds and temperatures) on 4
    devices and on 1, with a thin skin so that lists go stale and are rebuilt group by group.
    ``data``: "-" (the default model) or a pretrained model's name (e.g. "SevenNet-0")."""
    from ase.build import bulk

    from jaxmat.md import MDSettings
    from jaxmat.simulate import Engine

    systems = []
    for k in range(5):
        a = bulk("Si", "diamond", 5.43, cubic=True)
        a.rattle(0.05, seed=k)
        systems.append(a)
    systems.append(bulk("NaCl", "rocksalt", 5.64, cubic=True))
    settings = MDSettings(temperature=600, steps=60, timestep=1.0, log_every=10, seed=3)
    temps = [300, 600, 900, 600, 300, 600]
    out = {}
    runs = {}
    for n in (1, 4):
        eng = Engine(**({} if data == "-" else {"model": data}), dtype="float64", skin=0.15)
        runs[n] = eng.md(systems, settings, temperatures=temps, trajectory=None, log=lambda *a: None, devices=n)
        out[f"rebuilds_{n}"] = int(runs[n]["n_rebuilds"])
        out[f"compilations_{n}"] = eng.n_compilations
    out["positions"] = max(float(np.max(np.abs(a.positions - b.positions)))
                           for a, b in zip(runs[1]["final"], runs[4]["final"]))
    out["epot"] = float(np.max(np.abs(runs[1]["epot"] - runs[4]["epot"])))
    out["temperature_spread"] = float(np.ptp(runs[4]["temperature"][-1]))
    out["steps"] = runs[4]["step"].tolist()
    return out


if __name__ == "__main__":
    case, tmp, data = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    with jax.enable_x64(True):
        print(json.dumps({"training": training, "deep_training": deep_training,
                           "ensemble_prediction": ensemble_prediction, "md": md}[case](tmp, data)))
