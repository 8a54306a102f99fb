"""Training throughput on mlearn Si: structures/s and atoms/s per optimizer step (E+F+S loss).

    python experiments/bench_train.py [--epochs 1] [--graphs-per-batch 4] [--host-memory retain]
                                      [--matgl-python /path/to/venv/bin/python]

jaxmat: the same jitted step as ``jaxmat train`` (masked Huber loss through forces and stress,
AdamW, clipping), with ``jaxmat.retain_host_memory()`` as ``jaxmat train`` runs (``--host-memory
default`` leaves glibc's allocator alone). matgl (with ``--matgl-python``, a Python with matgl and
torch, in its own process after jaxmat): its ``PotentialLightningModule.step`` (energy/force/stress
loss) + torch Adam, on the same file and batch size, M3GNet of the same size. Times exclude the
first (compiling) step. Needs ../shared/data/mlearn.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_m3gnet's allocator settings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mlearn" / "Si_train.extxyz"


def bench_jaxmat(frames, gpb, epochs):
    import jax
    import optax

    from jaxmat.data import batch_budget, build_graphs, epoch_batches
    from jaxmat.models import Model
    from jaxmat.train import default_hyperparameters, loss_and_metrics
    from jaxmat.train._config import LossConfig

    hyper = {**default_hyperparameters("M3GNet"), "element_types": ["Si"]}
    model = Model("M3GNet", hyper, None)
    graphs = build_graphs(frames, model)
    budget = batch_budget(graphs, gpb)
    batches = epoch_batches(frames, graphs, budget, 0, 0)
    params = model.init_params(batches[0].graph)
    tx = optax.chain(optax.clip_by_global_norm(10.0), optax.adamw(1e-3))
    cfg = LossConfig()

    @jax.jit
    def step(params, opt_state, batch):
        (loss, _), grads = jax.value_and_grad(loss_and_metrics, has_aux=True)(params, batch, model.apply, cfg)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    t = time.perf_counter()
    params, opt_state, loss = jax.block_until_ready(step(params, opt_state, batches[0]))
    compile_s = time.perf_counter() - t
    n_struct = n_atoms = 0
    t = time.perf_counter()
    for e in range(epochs):
        for b in epoch_batches(frames, graphs, budget, 0, e):
            params, opt_state, loss = step(params, opt_state, b)
            n_struct += int(b.labels.energy_mask.sum())
            n_atoms += int(b.labels.forces_mask.sum())
        jax.block_until_ready(loss)
    dt = time.perf_counter() - t
    return compile_s, n_struct / dt, n_atoms / dt


def bench_matgl(gpb, epochs):
    try:
        from functools import partial

        import torch
        from matgl.graph.data import MGLDataLoader, collate_fn_pes
        from matgl.models import M3GNet
        from matgl.utils.training import MGLDatasetLoader, PotentialLightningModule
    except Exception as err:  # noqa: BLE001
        return f"not importable ({type(err).__name__})"
    import tempfile

    root = tempfile.mkdtemp(prefix="matgl-bench-")  # matgl writes processing files under root
    ds = MGLDatasetLoader.from_extxyz(DATA, cutoff=5.0, element_types=("Si",), save_cache=False, root=root)
    loader, _ = MGLDataLoader(train_data=ds, val_data=ds, batch_size=gpb, num_workers=0,
                              collate_fn=partial(collate_fn_pes, include_line_graph=False, include_stress=True))
    model = M3GNet(element_types=("Si",), is_intensive=False)
    module = PotentialLightningModule(model=model, stress_weight=0.1, include_line_graph=False)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    n_struct = n_atoms = 0
    first = True
    t = None
    for _ in range(epochs + 1):
        for batch in loader:
            results, size = module.step(batch)
            opt.zero_grad()
            results["Total_Loss"].backward()
            opt.step()
            if first:
                first, t = False, time.perf_counter()
                continue
            n_struct += size
            n_atoms += int(batch[0].num_nodes)
        if t is not None and n_struct >= epochs * len(ds):
            break
    dt = time.perf_counter() - t
    return n_struct / dt, n_atoms / dt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--graphs-per-batch", type=int, default=4)
    p.add_argument("--host-memory", default="retain", choices=("retain", "default"))
    p.add_argument("--matgl-python", default=None, help="a Python with matgl + torch (matgl skipped without it)")
    p.add_argument("--matgl-only", action="store_true", help=argparse.SUPPRESS)  # the matgl subprocess
    args = p.parse_args(argv)
    if args.matgl_only:
        print(json.dumps(bench_matgl(args.graphs_per_batch, args.epochs)))
        return
    if args.host_memory == "retain":  # before the first JAX computation, as jaxmat train does
        from jaxmat import retain_host_memory

        retain_host_memory()
    from jaxmat.data import read_frames

    frames = read_frames(DATA)
    compile_s, sps, aps = bench_jaxmat(frames, args.graphs_per_batch, args.epochs)
    print(f"{'trainer':10s} {'structures/s':>13s} {'atoms/s':>9s}  notes")
    print(f"{'jaxmat':10s} {sps:13.2f} {aps:9.0f}  first step (compile) {compile_s:.1f} s; "
          f"{len(frames)} structures, {args.graphs_per_batch}/batch, float32, host memory {args.host_memory}")
    if args.matgl_python:  # with glibc's defaults and with the retained heap; the faster is matgl's number
        import os

        from bench_m3gnet import RETAIN_ENV

        res = {}
        for mode, extra in (("default", {}), ("retained heap", RETAIN_ENV)):
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | extra
            out = subprocess.run([args.matgl_python, __file__, "--matgl-only", "--epochs", str(args.epochs),
                                  "--graphs-per-batch", str(args.graphs_per_batch)], capture_output=True, text=True,
                                 env=env)
            if out.returncode != 0:
                print(f"{'matgl':10s} {'-':>13s} {'-':>9s}  failed ({mode}): {out.stderr[-300:]}")
                return
            res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{'matgl':10s} {res[mode][0]:13.2f} {res[mode][1]:9.0f}  PotentialLightningModule.step + Adam, "
                  f"{mode} allocator")
        best = max(r[0] for r in res.values())
        print(f"speed-up {sps / best:.2f}x (against matgl's faster allocator setting)")


if __name__ == "__main__":
    main()
