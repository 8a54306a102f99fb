"""Relaxation: ASE FIRE/BFGS + FrechetCellFilter, the batched jax FIRE (equal to ASE's), the CLI table and
output, and structures that fail (dropped alone, never written)."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from jaxmat.calculators import JaxmatCalculator
from jaxmat.cli import main
from jaxmat.errors import ConfigError
from jaxmat.relax import RelaxSettings, relax_ase
from jaxmat.simulate import Engine


def _strained():
    si = bulk("Si", "diamond", 5.43, cubic=True)
    si.set_cell(si.cell * 1.03, scale_atoms=True)
    si.rattle(0.03, seed=2)
    nacl = bulk("NaCl", "rocksalt", 5.64, cubic=True)
    nacl.set_cell(nacl.cell @ np.diag([1.03, 1.0, 0.98]), scale_atoms=True)
    return [si, nacl]


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_jax_fire_reaches_the_ase_fire_frechet_result():
    """Strained Si8 and NaCl8 (float64, fmax 1e-3): the batched jax FIRE follows ASE's FIRE on
    FrechetCellFilter coordinates; cell lengths within 1e-3 A and energies within 1e-4 eV/atom."""
    settings = RelaxSettings(fmax=1e-3, steps=1000)
    eng = Engine(dtype="float64", skin=0.5)
    ours = eng.relax(_strained(), settings, graphs_per_batch=2)
    calc = JaxmatCalculator(dtype="float64")
    for atoms, mine in zip(_strained(), ours):
        ref = relax_ase(atoms, calc, settings)
        assert ref.converged and mine.converged
        assert np.abs(mine.atoms.cell.lengths() - ref.atoms.cell.lengths()).max() < 1e-3
        assert abs(mine.energy_per_atom - ref.energy_per_atom) < 1e-4
        assert mine.steps == pytest.approx(ref.steps, abs=2)
    assert eng.n_compilations <= 2  # (the shrinking Si cell may outgrow the first bond capacity once)


def test_in_flight_batch_swaps_and_drops_only_the_bad_structure():
    """Three structures through a batch of two: the waiting one takes a freed slot; a structure
    with atoms on top of each other is reported and dropped, the others relax."""
    bad = bulk("Cu", "fcc", 3.6, cubic=True)
    bad.positions[1] = bad.positions[0] + [0.1, 0.0, 0.0]
    structures = [_strained()[0], bad, _strained()[1]]
    records = Engine().relax(structures, RelaxSettings(fmax=0.05), names=["si", "bad", "nacl"], graphs_per_batch=2)
    assert [r.name for r in records] == ["si", "bad", "nacl"]
    assert records[1].error and "refused" in records[1].error and records[1].atoms is None
    assert records[0].converged and records[2].converged


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_relax_cli_jax_engine(tmp_path, capsys):
    path = tmp_path / "in.extxyz"
    ase.io.write(path, _strained())
    for engine in ("jax",):  # (the ASE engine's CLI path: test_relax_ase_reports_divergence...)
        out = tmp_path / f"{engine}.extxyz"
        assert main(["relax", str(path), "Cu:fcc:3.7", "--engine", engine, "--output", str(out)]) == 0
        table = capsys.readouterr().out
        assert "converged" in table and "Cu4" in table and "3 relaxed structure(s) written" in table
        frames = ase.io.read(out, ":")
        assert len(frames) == 3 and all(f.info["relax_converged"] for f in frames)
        assert all(f.get_stress().shape == (6,) and np.isfinite(f.get_potential_energy()) for f in frames)


def test_relax_ase_reports_divergence_and_never_writes_it(tmp_path, capsys):
    """A structure that diverges mid-run (a huge negative pressure tears the cell apart) is reported
    as failed and not written, and the command exits 1 (red team: it exited 0 when every structure failed)."""
    assert main(["relax", "Cu:fcc:3.6", "--pressure", "-900", "--output", str(tmp_path / "r.extxyz")]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "0 relaxed structure(s) written" in out and not (tmp_path / "r.extxyz").exists()


def test_bad_relax_settings_are_config_errors():
    with pytest.raises(ValueError, match="relax.fmax"):
        RelaxSettings(fmax=0.0)
    with pytest.raises(ValueError, match="relax.optimizer"):
        RelaxSettings(optimizer="lbfgs")
    assert main(["relax", "Si", "--engine", "jax", "--optimizer", "bfgs"]) == 2


def test_md_cli_jax_engine_writes_one_trajectory_per_replica(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAXMAT_CACHE_DIR", "off")
    traj = tmp_path / "md.traj"
    assert main(["md", "Si", "--engine", "jax", "--replicas", "2", "--steps", "10", "--log-every", "5",
                 "--trajectory", str(traj)]) == 0
    out = capsys.readouterr().out
    assert "1 compilation(s)" in out and "step     10" in out
    for r in range(2):
        assert len(ase.io.read(tmp_path / f"md_r{r}.traj", ":")) == 3
    # it names the files it wrote, not the --trajectory it split (issue 45 item 18)
    assert f"trajectories {tmp_path / 'md_r0.traj'}, {tmp_path / 'md_r1.traj'}" in out and not traj.exists()
    assert main(["md", "Si", "--replicas", "2"]) == 2  # replicas need the jax engine
    assert main(["md", "Si", "--ensemble", "npt"]) == 2  # and so does NPT


def test_pressure_is_refused_for_a_structure_whose_cell_cannot_relax(tmp_path):
    """Red team: ``jaxmat relax h2o.xyz --pressure 1`` ignored the pressure without a word (a molecule's
    cell does not relax); both engines refuse it, naming the structure."""
    from ase.build import molecule

    from jaxmat.relax import check_pressure_applies

    h2o = molecule("H2O")
    with pytest.raises(ConfigError, match="H2O.*not periodic in all three directions"):
        check_pressure_applies([bulk("Si", "diamond", 5.43), h2o], RelaxSettings(pressure=1.0), ["si", "water"])
    check_pressure_applies([h2o], RelaxSettings())  # no pressure asked: nothing to refuse
    ase.io.write(tmp_path / "h2o.xyz", h2o)
    for engine in ("ase", "jax"):
        assert main(["relax", str(tmp_path / "h2o.xyz"), "--engine", engine, "--pressure", "1",
                     "--output", str(tmp_path / "r.extxyz")]) == 2
