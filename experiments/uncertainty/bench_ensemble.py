"""Benchmark: the cost of ensembles — prediction with K members vs one, vmap vs sequential, and
the training step of deep and shallow ensembles vs one model.

    python experiments/uncertainty/bench_ensemble.py [--members 8] [--repeats 15] [--train-members 5]

Prediction: the default M3GNet (its weights with perturbed readouts as members, which does not
change the cost) on the rattled Si64 and Cu108 cells of tests/fixtures; the jitted
energy + forces + stress function alone on a prepared padded graph (float32), median of
``--repeats`` calls after warm-up. Rows: one member; a deep ensemble of K members evaluated in one
vmapped call and one member after another (``lax.map``); a shallow ensemble (K readout heads on
one body) the same two ways, and its energy-only call (one body pass, where it is cheap).

Training: one optimizer step (loss, gradient, update) of the small M3GNet of
``experiments/uncertainty/configs`` on one batch of 4 Si64 training frames (mlearn Si; the
fixture cells when ../shared is absent), for one model, a deep ensemble of ``--train-members``
(vmapped) and a shallow one. Run with nothing else busy; the device is whatever JAX picks (set
JAX_PLATFORMS=cpu to force the CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import ase.io
import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "fixtures" / "m3gnet_mp2021_dev.extxyz"
SI_TRAIN = ROOT.parent / "shared" / "data" / "mlearn" / "Si_train.extxyz"


def median_ms(fn, repeats):
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def members(model, k_members, scale=0.05):
    out = []
    for k in range(k_members):
        rng = np.random.default_rng(k)
        readout = jax.tree_util.tree_map(lambda x: np.asarray(x) * (1 + scale * rng.normal(size=np.shape(x))),
                                         model.params["readout"])
        out.append(model.with_params({**model.params, "readout": readout}))
    return out


def prediction_table(K, repeats):
    from jaxmat import load_model
    from jaxmat.graph import atoms_to_graph, bucket_sizes, cast_floats, graph_sizes, pad_graph
    from jaxmat.models import stack_members
    from jaxmat.potential import energy_forces_stress

    model = load_model()
    ms = members(model, K)
    deep, shallow = stack_members(ms, "deep"), stack_members(ms, "shallow")
    cells = {a.info["name"]: a for a in ase.io.read(REFERENCE, ":")}
    rows = []
    for name in ("Si64", "Cu108"):
        atoms = cells[f"{name}_rattled"]
        g = atoms_to_graph(atoms, model.cutoff, model.three_body_cutoff)
        sizes = bucket_sizes(graph_sizes(g), 1.05)
        g = jax.tree_util.tree_map(jnp.asarray, cast_floats(pad_graph(g, sizes), "float32"))
        p1 = jax.tree_util.tree_map(jnp.asarray, model.params)
        single = jax.jit(lambda p, gg: energy_forces_stress(model.apply, p, gg, True))
        t1 = median_ms(lambda: single(p1, g), repeats)
        rows.append((name, "one member", t1))
        for label, ens in (("deep", deep), ("shallow", shallow)):
            pe = jax.tree_util.tree_map(jnp.asarray, ens.params)
            for mode in ("vmap", "sequential"):
                fn = jax.jit(lambda p, gg, e=ens, m=mode: e.member_results(p, gg, True, m))
                rows.append((name, f"{label} K={K} {mode}", median_ms(lambda: fn(pe, g), repeats)))
        pe = jax.tree_util.tree_map(jnp.asarray, shallow.params)
        energy_only = jax.jit(lambda p, gg: shallow.members_apply(p, gg, "vmap"))
        rows.append((name, f"shallow K={K} energies only", median_ms(lambda: energy_only(pe, g), repeats)))
        energy_one = jax.jit(model.apply)
        rows.append((name, "one member, energy only", median_ms(lambda: energy_one(p1, g), repeats)))
        rows.append((name, f"(edges padded {sizes.n_edge})", float("nan")))
    return rows


def training_table(K, repeats):
    from jaxmat.data import batch_budget, build_graphs, epoch_groups, make_batch, read_frames
    from jaxmat.train import config_from_dict
    from jaxmat.train._optim import make_optimizer
    from jaxmat.train._steps import build_steps, ensemble_template, member_batch, stack
    from jaxmat.train._setup import make_model

    source = SI_TRAIN if SI_TRAIN.is_file() else REFERENCE
    frames = [f for f in read_frames(source) if len(f.atoms) == 64][:4] if source == SI_TRAIN else None
    if frames is None:  # fixture cells: the labels are the reference energies/forces
        frames = [f for f in read_frames(REFERENCE, energy_key="energy", forces_key="forces", require=("energy",))][:4]
    hyper = {"dim_node": 32, "dim_edge": 32, "units": 32, "nblocks": 2, "readout_features": [32, 32, 1]}
    rows = []
    base_ms = None
    import jaxmat.train._steps as steps

    for kind in ("none", "deep", "deep-vmap", "shallow"):
        vmapped = kind == "deep-vmap"
        kind = "deep" if vmapped else kind
        steps.member_mode = (lambda: "vmap") if vmapped else (lambda: "sequential")
        cfg = config_from_dict({"data": {"train": str(source), "graphs_per_batch": 4},
                                "model": {"hyperparameters": hyper}, "run": {"progress": False},
                                "ensemble": {"kind": kind, **({"size": K} if kind != "none" else {})}})
        model = make_model(cfg.model, cfg.run, frames, "atoms")
        graphs = build_graphs(frames, model)
        budget = batch_budget(graphs, 4)
        idx = epoch_groups(graphs, budget, 0, 0)[0]
        batch = make_batch(idx, frames, graphs, budget, "float32")
        member = model.init_params(batch.graph, 0)
        params = stack(cfg.ensemble, [member] * (1 if kind == "none" else K))
        tx = make_optimizer(cfg.optim, 10)
        opt = jax.vmap(tx.init)(params) if kind == "deep" else tx.init(params)
        if kind == "deep":
            batch = member_batch(cfg.ensemble, batch, idx, None, [len(f.atoms) for f in frames])
        step, _ = build_steps(cfg, ensemble_template(cfg.ensemble, model, member), tx, "atoms")
        ms = median_ms(lambda: step(params, opt, params, batch, 1.0), max(3, repeats // 3))
        base_ms = base_ms or ms
        label = {"none": "one model", "deep": f"deep K={K} ({'vmapped' if vmapped else 'lax.map'} step)",
                 "shallow": f"shallow K={K} heads"}[kind]
        rows.append(("train step", label, ms, ms / base_ms))
    return rows, len(idx)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--train-members", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    rows = prediction_table(args.members, args.repeats)
    print("\n## Prediction: energy + forces + stress per call (float32, jitted, median ms)\n")
    print("| cell | what | ms | x one member |\n|---|---|---|---|")
    base = {}
    for cell, what, ms in rows:
        if what == "one member":
            base[cell] = ms
        if np.isnan(ms):
            print(f"| {cell} | {what} | | |")
        else:
            print(f"| {cell} | {what} | {ms:.1f} | {ms / base[cell]:.2f} |")
    train_rows, n = training_table(args.train_members, args.repeats)
    print(f"\n## Training: one optimizer step on {n} Si64 frames (small M3GNet, float32, median ms)\n")
    print("| what | ms | x one model |\n|---|---|---|")
    for _, what, ms, ratio in train_rows:
        print(f"| {what} | {ms:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
