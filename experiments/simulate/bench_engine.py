"""Benchmark: MD atom-steps per second and relaxations per minute, ASE path vs the jax engine.

    python experiments/simulate/bench_engine.py [--dtype float32] [--steps 200] [--big 4096] [--drift-ps 5]

Protocol (fixed before any number was seen): Langevin MD at 300 K, 1 fs, of rattled (0.05 A) Si64;
the ASE path is ``jaxmat md --engine ase`` (``ase.md.Langevin`` + ``JaxmatCalculator``, one structure;
R replicas through it cost R times one), the jax engine runs R = 1, 8 and 32 replicas in one batch
(skin 0.3 A). Each run first does ``--warmup`` steps (compilation, excluded) and then ``--steps`` timed
steps; "first step" is the wall time from creating the engine/calculator to the end of the first
step. A 4,096-atom Si cell is run for ``--big-steps``. Then NVE drift over ``--drift-ps`` ps (Si64,
jax engine, float32 and 1 fs), and the relaxation of the cubic crystals of matgl's README benchmark
table (``../shared/pretrained/matgl/M3GNet-MP-2021.2.8-PES/README.md``: ``ase.build.bulk`` at the
MP lattice constant, strained by +3 %, FIRE, fmax 0.05 eV/A, cell relaxed), one by one through ASE
vs batched (32 at a time). matgl's own MD and ``Relaxer`` run in the same script where matgl is
importable. Run with nothing else busy on the machine.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.md.langevin import Langevin

from jaxmat.calculators import JaxmatCalculator
from jaxmat.md import MDSettings, thermalize
from jaxmat.relax import RelaxSettings, relax_ase
from jaxmat.simulate import Engine

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT.parent / "shared" / "pretrained" / "matgl" / "M3GNet-MP-2021.2.8-PES" / "README.md"
STRUCTURES = {"FCC": "fcc", "BCC": "bcc", "Diamond (FCC)": "diamond", "Zinc blende (FCC)": "zincblende",
              "Halite": "rocksalt", "Halite (FCC)": "rocksalt", "Caesium chloride": "cesiumchloride"}


def si(reps: int, seed: int = 0):
    a = bulk("Si", "diamond", 5.43, cubic=True).repeat(reps)
    a.rattle(0.05, seed=seed)
    return a


def ase_md(atoms, dtype, warmup, steps):
    t0 = time.perf_counter()
    calc = JaxmatCalculator(dtype=dtype)
    a = atoms.copy()
    a.calc = calc
    thermalize(a, 300.0, np.random.default_rng(0))
    dyn = Langevin(a, units.fs, temperature_K=300.0, friction=0.01 / units.fs, rng=np.random.default_rng(0),
                   fixcm=False)
    dyn.run(1)
    first = time.perf_counter() - t0
    dyn.run(warmup)
    t = time.perf_counter()
    dyn.run(steps)
    dt = (time.perf_counter() - t) / steps
    return first, dt, calc.n_compilations


def jax_md(atoms, replicas, dtype, warmup, steps, chunk=50):
    t0 = time.perf_counter()
    eng = Engine(dtype=dtype)
    systems = [atoms] * replicas
    s = MDSettings(temperature=300.0, steps=1, log_every=1)
    eng.md(systems, s, trajectory=None, log=lambda line: None)
    first = time.perf_counter() - t0
    eng.md(systems, MDSettings(temperature=300.0, steps=warmup, log_every=chunk), trajectory=None,
           log=lambda line: None)
    t = time.perf_counter()
    out = eng.md(systems, MDSettings(temperature=300.0, steps=steps, log_every=chunk), trajectory=None,
                 log=lambda line: None)
    dt = (time.perf_counter() - t) / steps
    return first, dt, eng.n_compilations, out["n_rebuilds"]


def matgl_md(atoms, warmup, steps):
    try:
        import matgl
        from matgl.ext.ase import PESCalculator
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return None
    calc = PESCalculator(matgl.load_model(TABLE.parent), stress_unit="eV/A3")
    a = atoms.copy()
    a.calc = calc
    dyn = Langevin(a, units.fs, temperature_K=300.0, friction=0.01 / units.fs, fixcm=False)
    dyn.run(warmup)
    t = time.perf_counter()
    dyn.run(steps)
    return (time.perf_counter() - t) / steps


def crystals():
    """(name, strained Atoms) for every row of matgl's cubic-crystal table ase.build can make."""
    if not TABLE.is_file():
        return []
    out = []
    for line in TABLE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.match(r"^[0-9.]+$", cells[3] or "x"):
            continue
        name, kind, mp_a = re.sub(r"\s*\(.*\)", "", cells[0]), cells[1], float(cells[3])
        try:
            if kind == "Cubic perovskite":
                a_site, b_site = re.findall(r"[A-Z][a-z]?", name)[:2]
                atoms = Atoms(f"{a_site}{b_site}O3", cell=np.eye(3) * mp_a, pbc=True,
                              scaled_positions=[[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]])
            else:
                atoms = bulk(name, STRUCTURES[kind], a=mp_a)
        except Exception:  # noqa: BLE001 - rows ase.build cannot make are listed as skipped
            print(f"  (skipped {name}: {kind})")
            continue
        atoms.set_cell(atoms.cell * 1.03, scale_atoms=True)
        out.append((name, atoms))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dtype", default="float32")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--big", type=int, default=4096)
    p.add_argument("--big-steps", type=int, default=10)
    p.add_argument("--drift-ps", type=float, default=5.0)
    p.add_argument("--skip-relax", action="store_true")
    args = p.parse_args()

    print(f"## MD, Langevin 300 K, {args.dtype}: atom-steps/s (median-free: mean over {args.steps} steps after "
          f"{args.warmup} warm-up)\n")
    print("| cell | engine | replicas | ms/step | atom-steps/s | vs ASE path | compilations | rebuilds | first step s |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = si(2)
    first, dt, nc = ase_md(base, args.dtype, args.warmup, args.steps)
    ref_rate = 64 / dt
    print(f"| Si64 | ase | 1 | {dt * 1e3:.1f} | {ref_rate:.0f} | 1.00 | {nc} | - | {first:.1f} |", flush=True)
    t = matgl_md(base, args.warmup, args.steps)
    print(f"| Si64 | matgl ASE | 1 | " + (f"{t * 1e3:.1f} | {64 / t:.0f} | {64 / t / ref_rate:.2f} | - | - | - |"
                                           if t else "not importable here (no torch) | | | | | |"), flush=True)
    for r in (1, 8, 32):
        first, dt, nc, nr = jax_md(base, r, args.dtype, args.warmup, args.steps if r < 32 else args.steps // 4)
        rate = 64 * r / dt
        print(f"| Si64 | jax | {r} | {dt * 1e3:.1f} | {rate:.0f} | {rate / ref_rate:.2f} | {nc} | {nr} | {first:.1f} |",
              flush=True)
    reps = round((args.big / 8) ** (1 / 3))
    big = si(reps)
    first, dt, nc = ase_md(big, args.dtype, 2, args.big_steps)
    big_ref = len(big) / dt
    print(f"| Si{len(big)} | ase | 1 | {dt * 1e3:.0f} | {big_ref:.0f} | 1.00 | {nc} | - | {first:.1f} |", flush=True)
    first, dt, nc, nr = jax_md(big, 1, args.dtype, 2, args.big_steps, chunk=5)
    print(f"| Si{len(big)} | jax | 1 | {dt * 1e3:.0f} | {len(big) / dt:.0f} | {len(big) / dt / big_ref:.2f} | {nc} | "
          f"{nr} | {first:.1f} |", flush=True)

    if args.drift_ps > 0:
        steps = int(args.drift_ps * 1000)
        eng = Engine(dtype=args.dtype)
        t = time.perf_counter()
        out = eng.md([base], MDSettings(ensemble="nve", temperature=300.0, steps=steps, log_every=100),
                     trajectory=None, log=lambda line: None)
        etot = out["etotal"][:, 0] / len(base)
        drift = etot - etot[0]
        slope = np.polyfit(out["time_ps"], etot, 1)[0]
        print(f"\n## NVE Si64, 300 K, 1 fs, {args.dtype}, jax engine, {args.drift_ps:g} ps "
              f"({time.perf_counter() - t:.0f} s, {out['n_rebuilds']} rebuilds)\n")
        print(f"max |E_tot - E_tot(0)| = {np.abs(drift).max() * 1e3:.3f} meV/atom; linear drift "
              f"{slope * 1e3:.3f} meV/atom/ps; std {etot.std() * 1e3:.3f} meV/atom", flush=True)

    if args.skip_relax:
        return
    todo = crystals()
    if not todo:
        print("\n(relaxation table skipped: ../shared is absent)")
        return
    names, structures = zip(*todo)
    settings = RelaxSettings(fmax=0.05, steps=500)
    print(f"\n## Relaxation of {len(todo)} cubic crystals (+3 % strain, FIRE, fmax 0.05, cell relaxed, {args.dtype})\n")
    print("| path | wall s | relaxations/min | converged | compilations | mean steps |")
    print("|---|---|---|---|---|---|")
    calc = JaxmatCalculator(dtype=args.dtype)
    t = time.perf_counter()
    ase_records = [relax_ase(a, calc, settings, n) for n, a in zip(names, structures)]
    wall = time.perf_counter() - t
    print(f"| jaxmat through ASE (one by one) | {wall:.0f} | {60 * len(todo) / wall:.1f} | "
          f"{sum(r.converged for r in ase_records)}/{len(todo)} | {calc.n_compilations} | "
          f"{np.mean([r.steps for r in ase_records]):.0f} |", flush=True)
    eng = Engine(dtype=args.dtype)
    t = time.perf_counter()
    jax_records = eng.relax(list(structures), settings, names=list(names), graphs_per_batch=32)
    wall = time.perf_counter() - t
    print(f"| jaxmat batched (jax engine, 32 at a time) | {wall:.0f} | {60 * len(todo) / wall:.1f} | "
          f"{sum(r.converged for r in jax_records)}/{len(todo)} | {eng.n_compilations} | "
          f"{np.mean([r.steps for r in jax_records]):.0f} |", flush=True)
    try:
        import matgl  # noqa: F401
        print("| matgl Relaxer | (importable: run it here) | | | | |")
    except Exception:  # noqa: BLE001
        print("| matgl Relaxer | not importable here (no torch) | | | | |")
    da = [abs(a.atoms.cell.lengths()[0] - b.atoms.cell.lengths()[0]) for a, b in zip(ase_records, jax_records)
          if a.atoms is not None and b.atoms is not None]
    print(f"\nlargest |a_jax - a_ase| over the table: {max(da):.2e} A")


if __name__ == "__main__":
    main()
