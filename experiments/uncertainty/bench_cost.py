"""Cost of uncertainty with force and stress spreads vs one model: shallow ensembles in one pass,
deep ensembles, LLPR with r feature-gradient directions (r = 0: local).

    python experiments/uncertainty/bench_cost.py [--members 8] [--rounds 9] [--cells Si64 Cu108]

The default M3GNet (pretrained weights; members = perturbed readouts, which does not change the
cost) on the rattled cells of tests/fixtures; the jitted energy + forces + stress function on a
prepared padded graph (float32). Every variant is called once per round, in turn (interleaved), so a
busy machine slows them alike; the table gives the median per call and its ratio to one model's.
An LLPR's cost does not depend on its numbers, so random directions stand in for fitted ones.
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


def variants(K: int):
    from bench_ensemble import members

    from jaxmat import load_model
    from jaxmat.models import stack_members
    from jaxmat.models import LLPRModel, default_layer, layer_size
    from jaxmat.potential import energy_forces_stress, outputs_forces_stress

    model = load_model()
    ms = members(model, K)
    deep, shallow = stack_members(ms, "deep"), stack_members(ms, "shallow")
    layer = default_layer(model)
    P = layer_size(model.params, layer)
    A = np.random.default_rng(0).normal(size=(P, P))
    out = {"one model": (lambda p, g: energy_forces_stress(model.apply, p, g, True), model.params),
           "one model, one-pass path (control)": (lambda p, g: outputs_forces_stress(
               lambda q, gg: model.apply(q, gg)[None], p, g, True), model.params),
           f"shallow K={K} one pass": (lambda p, g: shallow.member_results(p, g, True, "vmap"), shallow.params),
           f"deep K={K} sequential": (lambda p, g: deep.member_results(p, g, True, "sequential"), deep.params)}
    for r in (0, 1, 2, 4, 8):  # 0: local (the force spread from each atom's energy variance, no gradient rows)
        llpr = LLPRModel(model.family, model.hyperparameters, model.params, {}, layer=tuple(layer), directions=A,
                         force_directions=r)
        out[f"LLPR r={r}" + (" (local)" if r == 0 else "")] = (lambda p, g, m=llpr: m.outputs(p, g, True), model.params)
    return out


def table(K: int, rounds: int, cells) -> list:
    from jaxmat.graph import atoms_to_graph, bucket_sizes, cast_floats, graph_sizes, pad_graph

    frames = {a.info["name"]: a for a in ase.io.read(REFERENCE, ":")}
    fns = variants(K)
    rows = []
    for cell in cells:
        atoms = frames[f"{cell}_rattled"]
        g = atoms_to_graph(atoms, 5.0, 4.0)
        g = jax.tree_util.tree_map(jnp.asarray, cast_floats(pad_graph(g, bucket_sizes(graph_sizes(g), 1.05)), "float32"))
        jitted = {name: (jax.jit(fn), jax.tree_util.tree_map(jnp.asarray, p)) for name, (fn, p) in fns.items()}
        for f, p in jitted.values():
            jax.block_until_ready(f(p, g))
        times = {name: [] for name in jitted}
        for _ in range(rounds):
            for name, (f, p) in jitted.items():
                t = time.perf_counter()
                jax.block_until_ready(f(p, g))
                times[name].append(time.perf_counter() - t)
        base = statistics.median(times["one model"])
        rows += [(cell, name, 1e3 * statistics.median(t), statistics.median(t) / base) for name, t in times.items()]
    return rows


def main(argv=None):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--cells", nargs="+", default=["Si64"])
    args = parser.parse_args(argv)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print("\n| cell | what (energy + forces + stress, with spreads) | ms | x one model |\n|---|---|---|---|")
    for cell, what, ms, ratio in table(args.members, args.rounds, args.cells):
        print(f"| {cell} | {what} | {ms:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
