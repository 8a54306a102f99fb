"""Benchmark: SevenNet-0 energy + forces + stress per ASE calculator call, jaxmat vs torch sevenn.

    python experiments/bench_sevennet.py [--sevenn-python PATH] [--repeats 9] [--rounds 3]

Cells: the rattled Si64, Cu108 and NaCl512 of tests/fixtures/m3gnet_mp2021_dev.extxyz (the cells of
bench_m3gnet.py). jaxmat: ``JaxmatCalculator("SevenNet-0")`` (float32, ``retain_host_memory()``, as
``jaxmat md`` runs), one full call = host graph + jitted model + transfer, after compilation and two
warm-up calls. torch: sevenn's ``SevenNetCalculator("7net-0")`` on the CPU (float32), run by
``--sevenn-python`` (a Python with torch and sevenn; default $JAXMAT_SEVENN_PYTHON or
../venvs/sevenn/bin/python) in its own process (experiments/_sevenn_peer.py). The two alternate
``--rounds`` times (jaxmat round, torch round, ...) so that a change in the machine's load hits both;
each round times ``--repeats`` calls per cell. The table gives the medians over all calls and
speed-up = torch ms / jaxmat ms. Run it with nothing else busy on the machine; both use all cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CELLS = ROOT / "tests" / "fixtures" / "m3gnet_mp2021_dev.extxyz"
NAMES = ("Si64_rattled", "Cu108_rattled", "NaCl512_rattled")
DEFAULT_PEER = os.environ.get("JAXMAT_SEVENN_PYTHON", str(ROOT.parent / "venvs" / "sevenn" / "bin" / "python"))


def cells():
    import ase.io

    frames = {a.info["name"]: a for a in ase.io.read(CELLS, ":")}
    return [frames[n] for n in NAMES]


def jaxmat_round(calcs, frames, repeats):
    """ms per call for each cell (``calcs``: one warmed-up calculator per cell)."""
    from ase.calculators.calculator import all_changes

    out = {}
    for atoms in frames:
        calc, times = calcs[atoms.info["name"]], []
        for _ in range(repeats):
            t = time.perf_counter()
            calc.calculate(atoms, ["energy", "forces", "stress"], all_changes)
            times.append(1e3 * (time.perf_counter() - t))
        out[atoms.info["name"]] = times
    return out


def torch_round(python, path, repeats):
    res = subprocess.run([python, str(ROOT / "experiments" / "_sevenn_peer.py"), str(path), str(repeats)],
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"torch sevenn failed: {res.stderr.strip().splitlines()[-1:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sevenn-python", default=DEFAULT_PEER)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    import jaxmat

    jaxmat.retain_host_memory()
    import ase.io
    from ase.calculators.calculator import all_changes

    from jaxmat.calculators import JaxmatCalculator

    frames = cells()
    calcs = {}
    for atoms in frames:
        calc = JaxmatCalculator("SevenNet-0")
        t = time.perf_counter()
        calc.calculate(atoms, ["energy", "forces", "stress"], all_changes)
        print(f"jaxmat {atoms.info['name']}: first call (compilation) {time.perf_counter() - t:.1f} s", flush=True)
        calc.calculate(atoms, ["energy", "forces", "stress"], all_changes)
        calcs[atoms.info["name"]] = calc
    ours = {n: [] for n in NAMES}
    theirs = {n: [] for n in NAMES}
    versions = None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cells.extxyz"
        ase.io.write(path, frames)
        for r in range(args.rounds):
            for n, v in jaxmat_round(calcs, frames, args.repeats).items():
                ours[n] += v
            peer = torch_round(args.sevenn_python, path, args.repeats)
            versions = peer["versions"]
            for n, v in peer["ms"].items():
                theirs[n] += v
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(f"\nSevenNet-0, energy + forces + stress per calculator call, float32, CPU ({os.cpu_count()} cores); "
          f"torch sevenn {versions['sevenn']} (torch {versions['torch']}, {versions['threads']} threads); "
          f"medians of {args.rounds} x {args.repeats} calls, interleaved\n")
    print("| cell | atoms | jaxmat ms | torch sevenn ms | speed-up |")
    print("|---|---|---|---|---|")
    for atoms in frames:
        n = atoms.info["name"]
        a, b = statistics.median(ours[n]), statistics.median(theirs[n])
        print(f"| {n.replace('_rattled', '')} | {len(atoms)} | {a:.0f} | {b:.0f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
