"""Bit-level fingerprint of jaxmat's numbers (issue 48: refactors must not change them).

    python scripts/fingerprint.py OUT.json    # needs ../shared; old tree: PYTHONPATH=<tree> python ...

Hashes (sha256 of the float bytes) of: M3GNet E/F/S float32 and float64 on the shared reference
structures (calculator path); jax-engine Langevin MD (Si 8 atoms, 30 steps) and NPT positions;
jax-engine FIRE relaxation; a 3-member deep ensemble's member results (vmap) on Si64 rattled.
"""
import hashlib, json, os, subprocess, sys, tempfile
import numpy as np
import ase.io
from ase.build import bulk

def h(*arrays):
    m = hashlib.sha256()
    for a in arrays:
        m.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    return m.hexdigest()[:16]

out = {}
import jax
from jaxmat.calculators import JaxmatCalculator
ref = ase.io.read(str(__import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "reference" / "m3gnet_mp2021_dev.extxyz"), ":")
for dtype in ("float32", "float64"):
    calc = JaxmatCalculator(dtype=dtype)
    vals = []
    for a in ref:
        a = a.copy(); a.calc = calc
        e = a.get_potential_energy(); f = a.get_forces()
        s = a.get_stress() if all(a.pbc) else np.zeros(6)
        vals += [np.float64(e), f, s]
    out[f"calc_{dtype}"] = h(*vals)

tmp = tempfile.mkdtemp()
def cli(*args):
    subprocess.run(["jaxmat", *args], cwd=tmp, check=True, capture_output=True)
cli("md", "Si", "--supercell", "1", "1", "1", "--engine", "jax", "--steps", "30", "--seed", "0", "--trajectory", "lv.traj")
tr = ase.io.read(os.path.join(tmp, "lv.traj"), ":")
out["md_langevin"] = h(*[t.positions for t in tr], *[t.get_velocities() for t in tr])
cli("md", "Si", "--supercell", "1", "1", "1", "--engine", "jax", "--ensemble", "npt", "--steps", "30", "--seed", "1", "--trajectory", "npt.traj")
tr = ase.io.read(os.path.join(tmp, "npt.traj"), ":")
out["md_npt"] = h(*[t.positions for t in tr], *[np.asarray(t.cell) for t in tr])
a = bulk("Si", "diamond", 5.6, cubic=True); a.rattle(0.05, seed=3)
b = bulk("NaCl", "rocksalt", 5.8, cubic=True); b.rattle(0.05, seed=4)
ase.io.write(os.path.join(tmp, "in.extxyz"), [a, b])
cli("relax", "in.extxyz", "--engine", "jax", "--output", "rx.extxyz")
rx = ase.io.read(os.path.join(tmp, "rx.extxyz"), ":")
out["relax_jax"] = h(*[r.positions for r in rx], *[np.asarray(r.cell) for r in rx])

import jaxmat
from jaxmat.models import stack_members
m = jaxmat.load_model("M3GNet-MP-2021.2.8-PES")
members = [m.with_params(jax.tree.map(lambda p, k=k: p * (1 + 0.01 * k), m.params)) for k in range(3)]
ens = stack_members(members, kind="deep")
si = bulk("Si", "diamond", 5.43, cubic=True).repeat(2); si.rattle(0.05, seed=5)
calc = JaxmatCalculator(model=ens)
si.calc = calc
si.get_potential_energy()
out["ensemble"] = h(*[np.asarray(v) for k, v in sorted(calc.results.items()) if isinstance(v, (np.ndarray, float))])
out["ensemble_keys"] = sorted(calc.results)
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(json.dumps(out, indent=1))
