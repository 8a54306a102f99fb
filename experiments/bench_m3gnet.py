"""Benchmark: energy-only vs energy + forces + stress of the default M3GNet, and matgl on the same cells.

    python experiments/bench_m3gnet.py [--matgl-python /path/to/venv/bin/python] [--host-memory retain]

Protocol: cells are the rattled Si64, Cu108 and NaCl512 of tests/fixtures/m3gnet_mp2021_dev.extxyz
and a rattled 4,096-atom NaCl supercell (seed 0). Each function is compiled once, called twice to
warm up, then timed alone (medians of ``--repeats`` calls, fewer for the large cells). Run with
nothing else busy on the machine. Columns:

* ``host ms``: graph construction on the host (vesin neighbours, triplets, padding) per call;
* ``E ms`` / ``EFS ms``: the jitted energy-only / energy+forces+stress function on a prepared graph,
  ``EFS/E`` their ratio;
* ``calc ms``: one full ``JaxmatCalculator`` call (host graph + jitted model + transfer), the number
  compared with matgl; ``atom-steps/s`` = atoms / calc time;
* ``GFLOP`` / ``GB``: XLA's cost analysis (FLOPs, bytes accessed) of E and EFS;
* ``temp MB``: XLA's per-call scratch buffer of EFS; ``faults``: minor page faults per EFS call
  (see ``jaxmat.retain_host_memory``: ``--host-memory retain``, the default, is what ``jaxmat md``
  runs with; ``default`` leaves glibc's allocator as it is);
* ``matgl ms`` / ``speed-up``: matgl's ``PESCalculator`` (M3GNet-MP-2021.2.8-PES from
  ../shared/pretrained) run by ``--matgl-python`` (a Python with matgl and torch) in a separate
  process (before jaxmat's measurements), once with glibc's defaults and once with the same
  allocator settings as jaxmat; the faster of the two is the peer's time. Speed-up = matgl ms /
  jaxmat calc ms.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from jaxmat._host_memory import ENVIRONMENT

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "fixtures" / "m3gnet_mp2021_dev.extxyz"
MATGL_MODEL = ROOT.parent / "shared" / "pretrained" / "matgl" / "M3GNet-MP-2021.2.8-PES"
RETAIN_ENV = ENVIRONMENT  # jaxmat.retain_host_memory()'s settings, for matgl's process


def median_ms(fn, repeats):
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def structures(big: int):
    import ase.io
    from ase.build import bulk

    cells = {a.info["name"]: a for a in ase.io.read(REFERENCE, ":")}
    out = {k.replace("_rattled", ""): cells[k] for k in ("Si64_rattled", "Cu108_rattled", "NaCl512_rattled")}
    if big:
        reps = max(1, round((big / 8) ** (1 / 3)))
        a = bulk("NaCl", "rocksalt", 5.64, cubic=True).repeat(reps)
        a.rattle(0.05, seed=0)
        out[f"NaCl{len(a)}"] = a
    for name, a in out.items():
        a.info["name"] = name
    return out


def cost(compiled):
    c = compiled.cost_analysis()
    c = c[0] if isinstance(c, list) else c
    return c.get("flops", float("nan")) / 1e9, c.get("bytes accessed", float("nan")) / 1e9


def bench_jaxmat(atoms, dtype, repeats):
    import jax
    import jax.numpy as jnp
    from ase.calculators.calculator import all_changes

    from jaxmat.calculators import JaxmatCalculator
    from jaxmat.graph import atoms_to_graph, cast_floats, pad_graph

    repeats = max(3, min(repeats, int(20000 / len(atoms))))
    calc = JaxmatCalculator(dtype=dtype)
    a, props = atoms.copy(), ["energy", "forces", "stress"]
    t = time.perf_counter()
    calc.calculate(a, props, all_changes)
    compile_s = time.perf_counter() - t
    calc_ms = median_ms(lambda: calc.calculate(a, props, all_changes), repeats)
    model = calc.model

    def host():
        g = atoms_to_graph(a, model.cutoff, model.three_body_cutoff)
        return cast_floats(pad_graph(g, calc.sizes), dtype)

    host_ms = median_ms(host, repeats)
    g0 = atoms_to_graph(a, model.cutoff, model.three_body_cutoff)
    g = jax.tree_util.tree_map(jnp.asarray, host())
    row = {"atoms": len(a), "edges": int(g0.graph.n_edge.sum()), "triplets": int(g0.triplets.n_triplet.sum()),
           "compile_s": compile_s, "calc_ms": calc_ms, "host_ms": host_ms}
    with jax.enable_x64(dtype == "float64"):
        params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, dtype), calc._params)
        energy = jax.jit(lambda p, gg: jnp.sum(model.apply(p, gg))).lower(params, g).compile()
        efs = calc._fn.lower(calc._params, g, True, None).compile()
        row["e_ms"] = median_ms(lambda: jax.block_until_ready(energy(params, g)), repeats)
        row["efs_ms"] = median_ms(lambda: jax.block_until_ready(efs(calc._params, g)), repeats)
        row["e_gflop"], row["e_gb"] = cost(energy)
        row["efs_gflop"], row["efs_gb"] = cost(efs)
        row["temp_mb"] = efs.memory_analysis().temp_size_in_bytes / 1e6
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            jax.block_until_ready(efs(calc._params, g))
        row["faults"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 3
    return row


def bench_matgl(python, cells, repeats):
    """{"default": {...}, "retain": {...}} from _matgl_peer.py, or a reason string."""
    if not python:
        return "no --matgl-python given"
    if not MATGL_MODEL.is_dir():
        return f"{MATGL_MODEL} missing"
    import ase.io

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cells.extxyz"
        ase.io.write(path, list(cells.values()))
        for mode, extra in (("default", {}), ("retain", RETAIN_ENV)):
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | extra
            res = subprocess.run([python, str(ROOT / "experiments" / "_matgl_peer.py"), str(path), str(MATGL_MODEL),
                                  str(max(3, repeats // 2))], capture_output=True, text=True, env=env)
            if res.returncode != 0:
                return f"matgl failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}"
            out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--big", type=int, default=4096, help="atoms of the large NaCl cell (0: none)")
    p.add_argument("--host-memory", default="retain", choices=("retain", "default"))
    p.add_argument("--matgl-python", default=os.environ.get("MATGL_PYTHON"),
                   help="a Python with matgl + torch (or $MATGL_PYTHON); matgl is skipped without it")
    args = p.parse_args(argv)
    if args.host_memory == "retain":  # before the first JAX computation, as the jaxmat command does
        from jaxmat import retain_host_memory

        retain_host_memory()
    import jax

    cells = structures(args.big)
    # matgl first, in its own processes: this one keeps its heap (retain_host_memory), and both at once
    # would not fit 24 GiB at 4,096 atoms
    peer = bench_matgl(args.matgl_python, cells, args.repeats)
    rows = {name: bench_jaxmat(atoms, args.dtype, args.repeats) for name, atoms in cells.items()}
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), dtype {args.dtype}, "
          f"host memory: {args.host_memory}, jax {jax.__version__}")
    if isinstance(peer, str):
        print(f"matgl: {peer}")
    else:
        v = peer["default"]["versions"]
        print(f"matgl {v['matgl']} (torch {v['torch']}, {v['threads']} threads); its time is the faster of "
              "glibc's default allocator and the retained one")
    head = ("| cell | atoms | edges | triplets | host ms | E ms | EFS ms | EFS/E | calc ms | atom-steps/s | "
            "GFLOP E / EFS | GB E / EFS | temp MB | faults | matgl ms | speed-up |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, r in rows.items():
        peer_ms = min(peer[m]["ms"][name] for m in peer) if not isinstance(peer, str) else float("nan")
        print(f"| {name} | {r['atoms']} | {r['edges']} | {r['triplets']} | {r['host_ms']:.1f} | {r['e_ms']:.1f} | "
              f"{r['efs_ms']:.1f} | {r['efs_ms'] / r['e_ms']:.2f} | {r['calc_ms']:.1f} | "
              f"{r['atoms'] / r['calc_ms'] * 1e3:.0f} | {r['e_gflop']:.2f} / {r['efs_gflop']:.2f} | "
              f"{r['e_gb']:.2f} / {r['efs_gb']:.2f} | {r['temp_mb']:.0f} | {r['faults']:.0f} | {peer_ms:.1f} | "
              f"{peer_ms / r['calc_ms']:.2f} |", flush=True)
    if not isinstance(peer, str):
        print("matgl ms by allocator: " + ", ".join(
            f"{n}: {peer['default']['ms'][n]:.1f} default / {peer['retain']['ms'][n]:.1f} retained" for n in rows))


if __name__ == "__main__":
    main()
