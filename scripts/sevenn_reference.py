"""Reference energies, forces and stress from torch ``sevenn`` (run with sevenn's own Python).

    /work/venvs/sevenn/bin/python scripts/sevenn_reference.py OUT.extxyz [--checkpoint PATH]
                                                              [--structures IN.extxyz]

Without ``--structures`` it evaluates the built-in parity set (``parity_structures()``: a molecule,
one-atom cells, oxides, a strained compound, a random dense packing, ...) that
``tests/fixtures/sevennet0_parity.extxyz`` holds; ``--checkpoint`` defaults to SevenNet-0
(11Jul2024) inside the installed sevenn wheel. sevenn runs in float32 on the CPU. Each frame of
OUT gets ``info["name"]``, ``info["model"]`` and the results as a single-point calculator (stress
in eV/A^3, ASE sign; none for structures not periodic in all directions). Needs ase, numpy, torch,
sevenn; never imports jaxmat.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")


def _random_packing(rng, symbols, density: float, min_dist: float):
    """Atoms at random positions in a cube (number density ``density`` /A^3), none closer than
    ``min_dist`` (periodic distances), by seeded rejection sampling."""
    from ase import Atoms

    n = len(symbols)
    a = (n / density) ** (1 / 3)
    pos = []
    while len(pos) < n:
        p = rng.uniform(0, a, 3)
        d = np.array(pos) - p if pos else np.zeros((0, 3))
        d -= a * np.round(d / a)
        if not pos or np.min(np.linalg.norm(d, axis=1)) >= min_dist:
            pos.append(p)
    return Atoms(symbols, positions=pos, cell=[a, a, a], pbc=True)


def parity_structures():
    """The parity set: small, varied, seeded (the same on every machine)."""
    from ase import Atoms
    from ase.build import bulk, molecule

    rng = np.random.default_rng(20240711)

    def rattled(atoms, amp, name):
        atoms = atoms.copy()
        atoms.positions += rng.normal(0, amp, atoms.positions.shape)
        atoms.info["name"] = name
        return atoms

    out = []
    m = molecule("CH3CH2OH")
    m.info["name"] = "ethanol_molecule"
    out.append(rattled(m, 0.05, "ethanol_molecule"))
    one = Atoms("Al", cell=[[0.0, 2.1, 2.0], [2.05, 0.0, 2.0], [2.1, 2.05, 0.1]], pbc=True)
    one.info["name"] = "Al_one_atom_triclinic"
    out.append(one)
    na = bulk("Na", "bcc", 4.2)
    na.info["name"] = "Na_one_atom_bcc"
    out.append(na)
    out.append(rattled(bulk("MgO", "rocksalt", 4.25, cubic=True), 0.06, "MgO_rocksalt_rattled"))
    rutile = Atoms("Ti2O4", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0.305, 0.305, 0], [0.695, 0.695, 0],
                                              [0.805, 0.195, 0.5], [0.195, 0.805, 0.5]],
                   cell=[4.59, 4.59, 2.96], pbc=True)
    out.append(rattled(rutile, 0.05, "TiO2_rutile_rattled"))
    bto = Atoms("BaTiO3", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.52], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
                cell=[4.0, 4.0, 4.05], pbc=True)
    out.append(rattled(bto, 0.04, "BaTiO3_perovskite_rattled"))
    gaas = bulk("GaAs", "zincblende", 5.65, cubic=True)
    strain = np.array([[1.03, 0.02, 0.0], [0.02, 0.98, 0.015], [0.0, 0.015, 1.01]])
    gaas.set_cell(gaas.cell.array @ strain, scale_atoms=True)
    out.append(rattled(gaas, 0.03, "GaAs_strained"))
    dense = _random_packing(rng, ["Si"] * 8 + ["O"] * 10 + ["Al"] * 4 + ["Na"] * 2, density=0.075, min_dist=1.8)
    dense.info["name"] = "SiAlNaO_random_dense"
    out.append(dense)
    li = bulk("Li", "bcc", 3.44, cubic=True).repeat((2, 2, 2))
    out.append(rattled(li, 0.08, "Li16_bcc_rattled"))
    slab = bulk("Pt", "fcc", 3.92, cubic=True).repeat((1, 1, 2))
    slab.center(vacuum=6.0, axis=2)
    out.append(rattled(slab, 0.04, "Pt_slab_vacuum"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--checkpoint", default=None, help="sevenn checkpoint (.pth); default: SevenNet-0 11Jul2024")
    ap.add_argument("--structures", default=None, help="extxyz to evaluate instead of the built-in parity set")
    args = ap.parse_args()
    import ase.io
    import sevenn
    import torch
    from ase.calculators.singlepoint import SinglePointCalculator
    from sevenn.calculator import SevenNetCalculator

    ckpt = args.checkpoint or str(Path(sevenn.__file__).parent / "pretrained_potentials" / "SevenNet_0__11Jul2024"
                                  / "checkpoint_sevennet_0.pth")
    calc = SevenNetCalculator(ckpt, device="cpu")
    frames = ase.io.read(args.structures, ":") if args.structures else parity_structures()
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        res = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        if atoms.pbc.all():
            res["stress"] = atoms.get_stress()
        info = dict(atoms.info)
        atoms.calc = None
        atoms.info = {**info, "model": f"{Path(ckpt).parent.name} via torch sevenn {sevenn.__version__} "
                                       f"(torch {torch.__version__}, CPU, float32)"}
        atoms.calc = SinglePointCalculator(atoms, **res)
        out.append(atoms)
    ase.io.write(args.out, out, format="extxyz")
    print(f"wrote {args.out}: {len(out)} structures")


if __name__ == "__main__":
    main()
