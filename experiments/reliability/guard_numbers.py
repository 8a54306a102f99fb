"""The numbers behind the reliability guards (README, "Bad input"), measured in one run.

    python experiments/reliability/guard_numbers.py

Prints: the float32 energy of a 2,048-atom Si cell against float64, summed three ways; float32
forces of structures far from the origin against the same structures near it; and where the MD
guard stops two runs that blow up (ethanol with a timestep too large for its hydrogens).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase.build import bulk, molecule

import jaxmat
from jaxmat.calculators import JaxmatCalculator
from jaxmat.errors import SimulationError
from jaxmat.md import MDSettings, run_md
from jaxmat.potential import graph_totals


def totals(model):
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat((8, 8, 4))
    atoms.rattle(0.01, seed=0)
    e64 = model.predict([atoms], dtype="float64")[0]
    atoms.calc = JaxmatCalculator(model=model)
    e32 = atoms.get_potential_energy()
    per_atom = atoms.get_potential_energies().astype(np.float32)
    index = jnp.zeros(len(atoms), jnp.int32)
    plain = float(jax.ops.segment_sum(jnp.asarray(per_atom), index, num_segments=1)[0])
    compensated = float(jax.jit(graph_totals, static_argnums=2)(jnp.asarray(per_atom), index, 1)[0])
    exact = float(np.sum(per_atom, dtype=np.float64))
    n = len(atoms)
    print(f"Si {n} atoms, float64 model energy {e64:.6f} eV")
    print(f"  calculator float32 (float64 sum of per-atom)  {e32:.6f} eV  {abs(e32 - e64) / n:.2e} eV/atom from float64")
    print(f"  float32 segment sum of the same per-atom       {plain:.6f} eV  {abs(plain - exact):.4f} eV from their float64 sum")
    print(f"  float32 graph_totals (on the device)           {compensated:.6f} eV  {abs(compensated - exact):.4f} eV "
          f"(one float32 rounding at this size: {abs(float(np.spacing(np.float32(exact)))):.4f} eV)")


def far_from_origin(model):
    calc = JaxmatCalculator(model=model)
    crystal = bulk("Si", "diamond", 5.43, cubic=True)
    crystal.rattle(0.05, seed=1)
    unwrapped = crystal.copy()
    unwrapped.positions[3] += 18416 * crystal.cell[0]
    mol = molecule("CH3CH2OH")
    moved = mol.copy()
    moved.positions += 1e5
    for name, near, far in (("Si8, one atom 1e5 A away", crystal, unwrapped), ("ethanol moved by 1e5 A", mol, moved)):
        forces = []
        for a in (near, far):
            a = a.copy()
            a.calc = calc
            forces.append(a.get_forces())
        print(f"  float32 forces, {name}: max |dF| {np.abs(forces[0] - forces[1]).max():.2e} eV/A")


def blow_ups(model):
    calc = JaxmatCalculator(model=model)
    for ensemble, dt in (("langevin", 10.0), ("nve", 4.0)):
        try:
            run_md(molecule("CH3CH2OH"), calc, MDSettings(timestep=dt, steps=20, ensemble=ensemble, log_every=1),
                   trajectory=None, log=lambda _: None)
            print(f"  {ensemble} {dt} fs: ran")
        except SimulationError as err:
            print(f"  {ensemble} {dt} fs: {str(err).split('. Likely')[0]}")


if __name__ == "__main__":
    model = jaxmat.load_model()
    totals(model)
    print("coordinates far from the origin")
    far_from_origin(model)
    print("MD guard (ethanol, 300 K)")
    blow_ups(model)
