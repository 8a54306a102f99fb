"""Training throughput on mlearn Si, jaxmat against matgl, measured side by side in one run.

    python experiments/bench_train.py --matgl-python /path/to/venv/bin/python
                                      [--threads 1 all] [--rounds 3] [--epochs 1] [--graphs-per-batch 4]
                                      [--baseline REF]

Each measurement is one subprocess that trains ``--epochs`` epochs of mlearn Si (214 structures,
``--graphs-per-batch`` per step, E+F+S loss), timed after its compilations, and reports
structures/s (wall) and CPU seconds per step. Rounds alternate jaxmat and matgl (interleaved, so a
change of the machine's load hits both); the table gives each round and the medians. With one
thread, structures per CPU-second is the number to read on a busy machine (wall time then
depends on what else runs); on a quiet one the two agree.

* jaxmat: the training step of ``jaxmat train`` itself (``jaxmat.train._steps.build_steps`` with the
  library's default config: Huber E+F+S loss, AdamW, clipping, the fused EMA and health sums), fed as
  the trainer feeds it (each batch padded on the host just before its step, sums fetched after
  every step), with ``jaxmat.retain_host_memory()`` and the padding budgets a long run uses
  (``jaxmat.data.pad_budgets``; every budget compiled before the clock starts), float32.
* matgl 4.1.2 (``--matgl-python``: a Python with matgl and torch): ``PotentialLightningModule.step``
  (energy, force and stress loss) + ``torch.optim.Adam``, the same file and batch size, an M3GNet of
  the same size; its first step is not timed. Run with glibc's allocator and with the retained heap;
  the faster is matgl's number.
* ``--threads 1``: every process pinned to one core with one thread (XLA
  ``intra_op_parallelism_threads=1``, ``torch.set_num_threads(1)``), as the mlearn and ablation
  drivers run each training run; ``all``: the processes' default threads on every core.
* ``--baseline REF``: also time jaxmat at git revision REF (``git archive`` into a temporary folder,
  same worker), interleaved with the rest: a before/after in the same run.

Run it with nothing else busy on the machine. Needs ../shared/data/mlearn.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mlearn" / "Si_train.extxyz"
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
RETAIN_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "-1"}  # jaxmat._host_memory


def jaxmat_worker(gpb: int, epochs: int) -> dict:
    """Time the trainer's jitted step (its own process; thread settings come from the parent)."""
    import jaxmat

    jaxmat.retain_host_memory()  # before the first JAX computation, as jaxmat train does
    import jax
    import jax.numpy as jnp

    from jaxmat import data
    from jaxmat.models import Model
    try:
        from jaxmat.models import default_hyperparameters
    except ImportError:  # --baseline: a tree from before the registry had a public name
        from jaxmat.models._model import default_hyperparameters
    from jaxmat.train import config_from_dict
    from jaxmat.train._optim import make_optimizer
    from jaxmat.train._steps import build_steps

    frames = data.read_frames(DATA)
    cfg = config_from_dict({"data": {"train": str(DATA), "graphs_per_batch": gpb}, "model": {"family": "M3GNet"}})
    model = Model("M3GNet", {**default_hyperparameters("M3GNet"), "element_types": ["Si"]}, None)
    graphs = data.build_graphs(frames, model)
    top = data.batch_budget(graphs, gpb)
    if hasattr(data, "pad_budgets"):  # as a run of many steps pads (older revisions: one budget)
        budget = data.pad_budgets(graphs, gpb, data.pad_budget_count(10**6))
    else:
        budget = top
    groups = [data.epoch_groups(graphs, top, 0, e) for e in range(epochs)]
    params = model.init_params(data.make_batch(groups[0][0], frames, graphs, top).graph)
    tx = make_optimizer(cfg.optim, len(groups[0]))
    train_step = build_steps(cfg, model, tx, "atoms")[0]
    opt, ema = tx.init(params), jax.tree_util.tree_map(jnp.zeros_like, params)
    lr = jnp.asarray(1.0, jnp.float32)
    t0 = time.perf_counter()
    shapes = {}  # one batch of every padded shape the timed epochs use, compiled before the clock starts
    for idx in (i for g in groups for i in g):
        b = data.make_batch(idx, frames, graphs, budget)
        shapes.setdefault(b.graph.graph.senders.shape, b)
    for b in shapes.values():
        jax.block_until_ready(train_step(params, opt, ema, b, lr))
    compile_s = time.perf_counter() - t0
    n_struct = n_steps = 0
    w0, c0 = time.perf_counter(), time.process_time()
    for epoch_groups in groups:
        for idx in epoch_groups:
            batch = data.make_batch(idx, frames, graphs, budget)
            params, opt, ema, sums, health = train_step(params, opt, ema, batch, lr)
            jax.device_get((sums, health))  # the trainer reads both after every step
            n_struct, n_steps = n_struct + len(idx), n_steps + 1
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"structures_per_s": n_struct / wall, "cpu_s_per_step": cpu / n_steps, "steps": n_steps,
            "compile_s": compile_s, "shapes": len(shapes), "jaxmat": str(Path(jaxmat.__file__).parent)}


def matgl_worker(gpb: int, epochs: int, threads: int | None) -> dict:
    """Time matgl's training step (run by matgl's Python)."""
    import warnings

    warnings.filterwarnings("ignore")
    from functools import partial

    import torch

    if threads:
        torch.set_num_threads(threads)
    import matgl
    from matgl.graph.data import MGLDataLoader, collate_fn_pes
    from matgl.models import M3GNet
    from matgl.utils.training import MGLDatasetLoader, PotentialLightningModule

    root = tempfile.mkdtemp(prefix="matgl-bench-")  # matgl writes processing files under root
    ds = MGLDatasetLoader.from_extxyz(DATA, cutoff=5.0, element_types=("Si",), save_cache=False, root=root)
    loader, _ = MGLDataLoader(train_data=ds, val_data=ds, batch_size=gpb, num_workers=0,
                              collate_fn=partial(collate_fn_pes, include_line_graph=False, include_stress=True))
    model = M3GNet(element_types=("Si",), is_intensive=False)
    module = PotentialLightningModule(model=model, stress_weight=0.1, include_line_graph=False)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    n_struct = n_steps = 0
    w0 = c0 = None
    for _ in range(epochs + 1):
        for batch in loader:
            results, size = module.step(batch)
            opt.zero_grad()
            results["Total_Loss"].backward()
            opt.step()
            if w0 is None:  # the first step is not timed
                w0, c0 = time.perf_counter(), time.process_time()
                continue
            n_struct, n_steps = n_struct + size, n_steps + 1
            if n_struct >= epochs * len(ds):
                break
        if n_struct >= epochs * len(ds):
            break
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"structures_per_s": n_struct / wall, "cpu_s_per_step": cpu / n_steps, "steps": n_steps,
            "versions": f"matgl {matgl.__version__}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"}


def run_worker(python: str, which: str, threads: str, args, env_extra=None, pythonpath=None) -> dict:
    """One measurement in its own process: pinned to one core for ``threads == "1"``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | (env_extra or {})
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [python, __file__, "--worker", which, "--threads", threads, "--epochs", str(args.epochs),
           "--graphs-per-batch", str(args.graphs_per_batch)]
    if threads == "1":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + ONE_THREAD).strip()
        cmd = ["taskset", "-c", str(max(os.sched_getaffinity(0))), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if out.returncode != 0:
        raise RuntimeError(f"{which} worker failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def baseline_tree(ref: str) -> str:
    """jaxmat at git revision ``ref``, extracted (read-only on the repository) into a temporary folder."""
    dest = tempfile.mkdtemp(prefix="jaxmat-baseline-")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "jaxmat"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return dest


def bench(args) -> None:
    contenders = [("jaxmat", sys.executable, "jaxmat", {}, None)]
    if args.baseline:
        contenders.append((f"jaxmat {args.baseline}", sys.executable, "jaxmat", {}, baseline_tree(args.baseline)))
    if args.matgl_python:
        contenders += [("matgl", args.matgl_python, "matgl", {}, None),
                       ("matgl (retained heap)", args.matgl_python, "matgl", RETAIN_ENV, None)]
    cache = tempfile.mkdtemp(prefix="bench-train-xla-")  # compiled once per contender, not per round
    print(f"mlearn Si train ({DATA.name}), {args.graphs_per_batch} structures per step, {args.epochs} epoch(s) "
          f"per measurement, {args.rounds} interleaved rounds; structures/s (wall) and CPU ms per step")
    for threads in args.threads:
        res = {name: [] for name, *_ in contenders}
        for r in range(args.rounds):
            for name, python, which, env, path in contenders:
                extra = dict(env)
                if which == "jaxmat":
                    extra |= {"JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1"}
                res[name].append(run_worker(python, which, threads, args, extra, path))
                print(f"  [{threads} thread(s), round {r + 1}] {name}: {res[name][-1]['structures_per_s']:.2f} "
                      f"structures/s", flush=True)
        print(f"\n### {'one core, one thread' if threads == '1' else 'all cores, default threads'}\n")
        print("| trainer | structures/s (median) | rounds | CPU ms/step | structures per CPU-s | notes |\n"
              "|---|---|---|---|---|---|")
        med = {name: statistics.median(x["structures_per_s"] for x in v) for name, v in res.items()}
        per_cpu = {name: args.graphs_per_batch / statistics.median(x["cpu_s_per_step"] for x in v) for name, v in res.items()}
        for name, v in res.items():
            note = v[0].get("versions") or f"{v[0]['shapes']} padded shape(s), first compile {v[0]['compile_s']:.0f} s"
            rounds = ", ".join(f"{x['structures_per_s']:.2f}" for x in v)
            print(f"| {name} | {med[name]:.2f} | {rounds} | {1e3 * args.graphs_per_batch / per_cpu[name]:.0f} | "
                  f"{per_cpu[name]:.2f} | {note} |")
        peer = max((n for n in med if n.startswith("matgl")), key=med.get, default=None)
        if peer:
            print(f"\njaxmat / matgl (its faster allocator setting, {peer}): {med['jaxmat'] / med[peer]:.2f}x in "
                  f"structures/s; {per_cpu['jaxmat'] / per_cpu[peer]:.2f}x in structures per CPU-second")
        if args.baseline:
            base = f"jaxmat {args.baseline}"
            print(f"jaxmat / {base}: {med['jaxmat'] / med[base]:.2f}x in structures/s; "
                  f"{per_cpu['jaxmat'] / per_cpu[base]:.2f}x in structures per CPU-second")
        print()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--graphs-per-batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", nargs="+", default=["1", "all"], choices=("1", "all"))
    p.add_argument("--matgl-python", default=None, help="a Python with matgl + torch (matgl skipped without it)")
    p.add_argument("--baseline", default=None, help="also time jaxmat at this git revision")
    p.add_argument("--worker", choices=("jaxmat", "matgl"), help=argparse.SUPPRESS)  # one measurement
    args = p.parse_args(argv)
    if args.worker == "jaxmat":
        print(json.dumps(jaxmat_worker(args.graphs_per_batch, args.epochs)))
    elif args.worker == "matgl":
        print(json.dumps(matgl_worker(args.graphs_per_batch, args.epochs, 1 if args.threads == ["1"] else None)))
    else:
        if not DATA.is_file():
            sys.exit(f"needs {DATA} (../shared/data/mlearn)")
        bench(args)


if __name__ == "__main__":
    main()
