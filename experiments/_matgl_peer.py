"""matgl's side of bench_m3gnet.py, run by matgl's own Python (torch is never imported by jaxmat).

    /path/to/matgl-venv/bin/python experiments/_matgl_peer.py CELLS.extxyz MODEL_DIR REPEATS

Prints one JSON line: {"versions": ..., "ms": {cell name: median ms per PESCalculator call}}.
Each call computes energy, forces and stress (eV/A^3) with graph construction, as the ASE
calculator does in MD; medians after one warm-up call.
"""

import json
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def main():
    path, model_dir, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
    import ase.io
    import matgl
    import torch
    from ase.calculators.calculator import all_changes
    from matgl.ext.ase import PESCalculator

    calc = PESCalculator(matgl.load_model(model_dir), stress_unit="eV/A3")
    out = {}
    for atoms in ase.io.read(path, ":"):
        n = max(3, min(repeats, int(20000 / len(atoms))))
        props = ["energy", "forces", "stress"]
        calc.calculate(atoms, props, all_changes)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            calc.calculate(atoms, props, all_changes)
            times.append(time.perf_counter() - t)
        out[atoms.info["name"]] = 1e3 * statistics.median(times)
    print(json.dumps({"versions": {"matgl": matgl.__version__, "torch": torch.__version__,
                                   "threads": torch.get_num_threads()}, "ms": out}))


if __name__ == "__main__":
    main()
