"""Training step time on 1, 2 and 4 devices with the data-parallel path of ``jaxmat train``.

    python experiments/bench_scaling.py [--data FILE] [--graphs-per-batch 8] [--steps 10]

Protocol: the default M3GNet (float32) trained from scratch on ``--data`` (default mlearn Si train,
else the fixture cells of tests/), AdamW; one epoch's global batches (``--graphs-per-batch``
structures each) cycled; the first (compiling) step excluded, then the median of ``--steps``
steps. Each device count runs in its own process with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` on the CPU (or the real devices of an
accelerator: ``--real-devices``). Rows: "1 (plain)" is the one-device step; "1 (sharded)" the
data-parallel step on a one-device mesh (the overhead of the sharded code path); 2 and 4 the
data-parallel step. On a 2-core CPU the forced devices share the same two cores, so this measures
the overhead of splitting, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MLEARN_SI = ROOT.parent / "shared" / "data" / "mlearn" / "Si_train.extxyz"
FIXTURE = ROOT / "tests" / "fixtures" / "m3gnet_mp2021_dev.extxyz"


def worker(n: int, layout: str, data: str, gpb: int, steps: int) -> dict:
    from jaxmat import retain_host_memory

    retain_host_memory()
    import jax
    import jax.numpy as jnp
    import optax

    from jaxmat.data import batch_budget, build_graphs, epoch_groups, make_batch, read_frames
    from jaxmat.models import Model
    from jaxmat.models import default_hyperparameters
    from jaxmat.train import config_from_dict
    from jaxmat.train import _parallel
    from jaxmat.train._steps import build_steps

    frames = read_frames(data)
    elements = sorted({s for f in frames for s in f.atoms.get_chemical_symbols()})
    model = Model("M3GNet", {**default_hyperparameters("M3GNet"), "element_types": elements}, None, {})
    graphs = build_graphs(frames, model)
    budget = batch_budget(graphs, gpb)
    groups = epoch_groups(graphs, budget, 0, 0)
    cfg = config_from_dict({"data": {"train": data, "graphs_per_batch": gpb}, "run": {"devices": n}})
    tx = optax.adamw(1e-3)
    params = model.init_params(make_batch(groups[0], frames, graphs, budget).graph)
    mesh = _parallel.make_mesh(n) if layout == "data" else None
    if layout == "data":
        dev_budget = _parallel.device_budget(graphs, gpb, n)
        batches = [_parallel.stacked_batch(mesh, g, frames, graphs, dev_budget, "float32") for g in groups]
        params = _parallel.replicated(mesh, params)
    else:
        batches = [make_batch(g, frames, graphs, budget) for g in groups]
    step, _ = build_steps(cfg, model, tx, "atoms", mesh, layout)
    state = (params, tx.init(params), params)
    lr = jnp.asarray(1.0)
    t = time.perf_counter()
    out = step(*state, batches[0], lr)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t
    state = out[:3]
    times = []
    for k in range(steps):
        t = time.perf_counter()
        out = jax.block_until_ready(step(*state, batches[(k + 1) % len(batches)], lr))
        times.append(time.perf_counter() - t)
        state = out[:3]
    n_struct = statistics.mean(len(g) for g in groups)
    med = statistics.median(times)
    return {"devices": n, "layout": layout, "compile_s": compile_s, "step_ms": 1e3 * med,
            "structures_per_s": n_struct / med, "backend": jax.default_backend(), "n_visible": jax.device_count()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(MLEARN_SI if MLEARN_SI.is_file() else FIXTURE))
    p.add_argument("--graphs-per-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--real-devices", action="store_true", help="use the machine's devices (no forced CPU devices)")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(int(args.worker[0]), args.worker[1], args.data, args.graphs_per_batch, args.steps)))
        return
    env = dict(os.environ)
    if not args.real_devices:
        env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    rows = []
    for n, layout in ((1, "single"), (1, "data"), (2, "data"), (4, "data")):
        res = subprocess.run([sys.executable, __file__, "--data", args.data, "--graphs-per-batch",
                              str(args.graphs_per_batch), "--steps", str(args.steps), "--worker", str(n), layout],
                             capture_output=True, text=True, env=env)
        if res.returncode != 0:
            print(f"{n} devices ({layout}): failed: {res.stderr.strip().splitlines()[-1:]}")
            continue
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    base = rows[0]["step_ms"] if rows else float("nan")
    print(f"data: {args.data}, {args.graphs_per_batch} structures per step, float32, backend "
          f"{rows[0]['backend'] if rows else '?'}, {rows[0]['n_visible'] if rows else '?'} visible devices")
    print("| devices | path | step ms (median) | structures/s | vs 1 (plain) | first step s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        path = "plain" if r["layout"] == "single" else "sharded"
        print(f"| {r['devices']} | {path} | {r['step_ms']:.1f} | {r['structures_per_s']:.1f} | "
              f"{base / r['step_ms']:.2f} | {r['compile_s']:.1f} |")


if __name__ == "__main__":
    main()
