"""Benchmark: median wall time per energy+forces+stress call of the default M3GNet potential.

    python experiments/bench_m3gnet.py [--dtype float32] [--repeats 20] [--sizes 4000 32000]

Cells: the rattled Si64, Cu108 and NaCl512 of tests/fixtures/m3gnet_mp2021_dev.extxyz, plus
optional larger NaCl supercells (--sizes, atom counts). Columns:

* ``calc ms``: one full ASE calculator call (host graph build + jitted model + transfer);
* ``jit ms``: the jitted energy/forces/stress function alone on a prepared graph;
* ``GFLOP`` / ``GFLOP/s``: XLA's cost analysis of that function / jit time;
* ``matgl ms`` and ``speed-up``: matgl's PESCalculator (M3GNet-MP-2021.2.8-PES from
  ../shared/pretrained) on the same cells in the same process, when matgl is importable.

Run with nothing else busy on the machine; medians over ``--repeats`` calls after warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import ase.io
import jax
import numpy as np
from ase.build import bulk
from ase.calculators.calculator import all_changes

from jaxmat.calculators import JaxmatCalculator
from jaxmat.graph import atoms_to_graph, cast_floats, pad_graph

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "fixtures" / "m3gnet_mp2021_dev.extxyz"
MATGL_MODEL = ROOT.parent / "shared" / "pretrained" / "matgl" / "M3GNet-MP-2021.2.8-PES"


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def matgl_calculator():
    try:
        import matgl
        from matgl.ext.ase import PESCalculator
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return None
    if not MATGL_MODEL.is_dir():
        return None
    return PESCalculator(matgl.load_model(MATGL_MODEL), stress_unit="eV/A3")


def structures(sizes):
    cells = {a.info["name"]: a for a in ase.io.read(REFERENCE, ":")}
    out = {k: cells[k] for k in ("Si64_rattled", "Cu108_rattled", "NaCl512_rattled")}
    for n in sizes:
        reps = max(1, round((n / 8) ** (1 / 3)))
        a = bulk("NaCl", "rocksalt", 5.64, cubic=True).repeat(reps)
        a.rattle(0.05, seed=0)
        out[f"NaCl{len(a)}"] = a
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--sizes", type=int, nargs="*", default=[], help="extra NaCl cells (atom counts)")
    p.add_argument("--no-matgl", action="store_true")
    args = p.parse_args(argv)

    peer = None if args.no_matgl else matgl_calculator()
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), dtype {args.dtype}, "
          f"matgl: {'yes' if peer else 'not importable'}")
    head = f"{'cell':16s} {'atoms':>6s} {'edges':>7s} {'triplets':>8s} {'compile s':>9s} {'calc ms':>8s} " \
           f"{'jit ms':>8s} {'GFLOP':>6s} {'GFLOP/s':>7s} {'atom-steps/s':>12s} {'matgl ms':>8s} {'speed-up':>8s}"
    print(head)
    print("-" * len(head))
    rows = {}
    for name, atoms in structures(args.sizes).items():  # jaxmat first: torch's idle threads spin
        rows[name] = bench_jaxmat(atoms, args.dtype, args.repeats)
    for name, atoms in structures(args.sizes).items():
        row = rows[name]
        peer_ms = ratio = float("nan")
        if peer is not None:
            b = atoms.copy()
            peer_ms = median_ms(lambda: peer.calculate(b, ["energy", "forces", "stress"], all_changes),
                                max(3, args.repeats // 4))
            ratio = peer_ms / row["calc_ms"]
        print(f"{name:16s} {len(atoms):6d} {row['edges']:7d} {row['triplets']:8d} {row['compile_s']:9.2f} "
              f"{row['calc_ms']:8.2f} {row['jit_ms']:8.2f} {row['gflop']:6.2f} "
              f"{row['gflop'] / row['jit_ms'] * 1e3:7.1f} {len(atoms) / row['calc_ms'] * 1e3:12.0f} "
              f"{peer_ms:8.2f} {ratio:8.2f}", flush=True)


def bench_jaxmat(atoms, dtype, repeats):
    calc = JaxmatCalculator(dtype=dtype)
    a = atoms.copy()
    t = time.perf_counter()
    calc.calculate(a, ["energy", "forces", "stress"], all_changes)
    compile_s = time.perf_counter() - t
    calc_ms = median_ms(lambda: calc.calculate(a, ["energy", "forces", "stress"], all_changes), repeats)
    model = calc.model
    g = atoms_to_graph(a, model.cutoff, model.three_body_cutoff)
    edges, triplets = int(g.graph.n_edge.sum()), int(g.triplets.n_triplet.sum())
    g = jax.tree_util.tree_map(jax.numpy.asarray, cast_floats(pad_graph(g, calc.sizes), dtype))
    with jax.enable_x64(dtype == "float64"):
        fn = calc._fn.lower(calc._params, g, True).compile()
        cost = fn.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        jit_ms = median_ms(lambda: jax.block_until_ready(fn(calc._params, g)), repeats)
    return {"compile_s": compile_s, "calc_ms": calc_ms, "jit_ms": jit_ms, "edges": edges,
            "triplets": triplets, "gflop": cost.get("flops", float("nan")) / 1e9}


if __name__ == "__main__":
    main()
