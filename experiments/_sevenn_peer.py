"""torch sevenn's side of bench_sevennet.py, run by sevenn's own Python (jaxmat never imports torch).

    /path/to/sevenn-venv/bin/python experiments/_sevenn_peer.py CELLS.extxyz REPEATS [THREADS]

Prints one JSON line: {"versions": ..., "ms": {cell name: [ms per SevenNetCalculator call, ...]}}.
Each call computes energy, forces and stress with graph construction, as sevenn's ASE calculator
does in MD (SevenNet-0 11Jul2024, CPU, float32); two warm-up calls first.
"""

import json
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def main():
    path, repeats = sys.argv[1], int(sys.argv[2])
    import ase.io
    import sevenn
    import torch
    from ase.calculators.calculator import all_changes
    from sevenn.calculator import SevenNetCalculator

    if len(sys.argv) > 3:
        torch.set_num_threads(int(sys.argv[3]))
    calc = SevenNetCalculator("7net-0", device="cpu")
    out = {}
    props = ["energy", "forces", "stress"]
    for atoms in ase.io.read(path, ":"):
        for _ in range(2):
            calc.calculate(atoms, props, all_changes)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            calc.calculate(atoms, props, all_changes)
            times.append(1e3 * (time.perf_counter() - t))
        out[atoms.info["name"]] = times
    print(json.dumps({"versions": {"sevenn": sevenn.__version__, "torch": torch.__version__,
                                   "threads": torch.get_num_threads()}, "ms": out}))


if __name__ == "__main__":
    main()
