"""Bad MD settings are refused before any work; MD that blows up stops at the bad step, names the
likely cause, and never writes the bad frame (``jaxmat.guard.MDGuard``, shared by MD engines)."""

import ase.io
import numpy as np
import pytest
from ase import units
from ase.build import molecule

from jaxmat.cli import main
from jaxmat.errors import ConfigError, SimulationError, StructureError
from jaxmat.guard import GuardLimits, MDGuard
from jaxmat.md import MDSettings, run_md
from jaxmat.relax import RelaxSettings

# (settings, message regex): every one a ConfigError naming the field, its value and the rule
SETTINGS = [
    (dict(temperature=-10.0), r"md.temperature = -10.0 \(float\): expected >= 0"),
    (dict(temperature=float("nan")), r"md.temperature = nan .*finite number"),
    (dict(temperature="300"), r"md.temperature = '300' \(str\): expected a finite number"),
    (dict(timestep=0.0), r"md.timestep = 0.0 .*in \(0, 10\] fs"),
    (dict(timestep=-1.0), r"md.timestep = -1.0"),
    (dict(timestep=20.0), r"md.timestep = 20.0 .*atomistic MD is unstable"),
    (dict(friction=0.0), r"md.friction = 0.0 .*in \(0, 1\] 1/fs"),
    (dict(friction=-0.01), r"md.friction = -0.01"),
    (dict(steps=-5), r"md.steps = -5 .*>= 0"),
    (dict(steps=10.5), r"md.steps = 10.5 \(float\): expected an integer"),
    (dict(log_every=0), r"md.log_every = 0 .*>= 1"),
    (dict(ensemble="nvt"), r"md.ensemble = 'nvt' .*one of 'langevin', 'nve', 'nose_hoover', 'npt'"),
    (dict(pressure=5000.0), r"md.pressure = 5000.0 .*GPa"),
    (dict(thermostat_time=0.0), r"md.thermostat_time = 0.0"),
    (dict(seed=-1), r"md.seed = -1"),
    (dict(max_temperature=0.0), r"md.max_temperature = 0.0 .*> 0"),
    (dict(max_energy_drift=-1.0), r"md.max_energy_drift = -1.0"),
    (dict(temperature=6000.0, max_temperature=5000.0), r"md.max_temperature = 5000.0: the runaway limit must be above"),
]


@pytest.mark.parametrize("kwargs, match", SETTINGS, ids=[str(k) for k, _ in SETTINGS])
def test_bad_md_settings(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MDSettings(**kwargs)


def test_run_md_checks_before_any_work(tmp_path, calc32):
    traj = tmp_path / "never.traj"
    with pytest.raises(TypeError, match="settings must be a jaxmat.md.MDSettings"):
        run_md(molecule("H2O"), calc32, {"timestep": 20.0}, trajectory=str(traj))
    from ase import Atoms

    with pytest.raises(StructureError, match="overlap"):  # refused before step 0, as itself
        run_md(Atoms("H2", positions=[[0, 0, 0], [0.1, 0, 0]]), calc32, MDSettings(), trajectory=str(traj))
    with pytest.raises(ConfigError, match="jax engine only"):  # the ASE engine runs langevin and nve
        run_md(molecule("H2O"), calc32, MDSettings(ensemble="npt"), trajectory=str(traj))
    assert not traj.exists()


@pytest.mark.parametrize("ensemble, timestep, match", [
    ("langevin", 10.0, r"step 1 .*temperature reached .* K, above the runaway limit 5000 K .*timestep \(10 fs\) is too large"),
    ("nve", 4.0, r"step 1 .*in NVE the total energy moved .* eV/atom from its start \(limit 0.02 eV/atom"),
])
def test_md_that_blows_up_stops_before_the_bad_frame(calc32, tmp_path, ensemble, timestep, match):
    """Ethanol with hydrogen at 10 fs runs away; at 4 fs NVE breaks energy conservation. Both stop at
    step 1: the trajectory holds the good step-0 frame only."""
    traj = tmp_path / "md.traj"
    lines = []
    with pytest.raises(SimulationError, match=match):
        settings = MDSettings(temperature=300.0, timestep=timestep, steps=50, ensemble=ensemble, log_every=1)
        run_md(molecule("CH3CH2OH"), calc32, settings, trajectory=str(traj), log=lines.append)
    frames = ase.io.read(traj, ":")
    assert len(frames) == 1 == len(lines) and np.isfinite(frames[0].positions).all()


def test_guard_checks_every_replica():
    """The guard takes batched states (a leading replica axis) as an on-device engine produces them."""
    n = 8
    guard = MDGuard(n, 300.0, 1.0, conserves_energy=True)
    ekin_300 = 1.5 * n * units.kB * 300.0
    pos = np.zeros((3, n, 3))
    guard.check(0, pos, np.array([-40.0, -41.0, -42.0]), np.full(3, ekin_300))
    guard.check(1, pos, np.array([-40.01, -41.0, -42.0]), np.full(3, ekin_300))  # 1.25 meV/atom: fine
    with pytest.raises(SimulationError, match=r"moved 0.1 eV/atom"):
        guard.check(2, pos, np.array([-40.0, -41.0, -42.0 + 0.8]), np.full(3, ekin_300))
    pos[1, 5, 2] = np.nan
    with pytest.raises(SimulationError, match=r"positions became NaN or infinite \(atoms \[5\]\)"):
        MDGuard(n, 300.0, 1.0, False).check(7, pos, np.zeros(3), np.zeros(3))
    with pytest.raises(SimulationError, match=r"potential energy became NaN"):
        MDGuard(n, 300.0, 1.0, False).check(7, np.zeros((n, 3)), np.nan, 0.0)
    hot = MDGuard(n, 300.0, 1.0, False, GuardLimits(max_temperature=1000.0))
    with pytest.raises(SimulationError, match=r"temperature reached 1500 K, above the runaway limit 1000 K"):
        hot.check(3, np.zeros((n, 3)), 0.0, 1.5 * n * units.kB * 1500.0)
    assert MDGuard(n, 3000.0, 1.0, False).max_temperature == 30000.0


def test_a_pressure_that_would_be_ignored_is_refused(capsys):
    """--pressure outside NPT (either MD engine) or with relax --fix-cell would run at constant volume
    without a word (issue 45 item 7); not giving it keeps 0 GPa where the cell moves."""
    with pytest.raises(ConfigError, match=r"md.pressure = 50.0 GPa: a target pressure needs ensemble 'npt'"):
        MDSettings(pressure=50.0)
    with pytest.raises(ConfigError, match=r"md.pressure = 0.0 GPa"):
        MDSettings(ensemble="nve", pressure=0.0)
    assert MDSettings(ensemble="npt").pressure_ev_a3 == 0.0 and MDSettings(ensemble="npt", pressure=1.0).pressure_ev_a3 > 0
    for engine in ("ase", "jax"):
        assert main(["md", "Si", "--engine", engine, "--pressure", "50"]) == 2
        assert "needs ensemble 'npt'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"relax.pressure = 1.0 GPa with fix_cell"):
        RelaxSettings(fix_cell=True, pressure=1.0)
    assert RelaxSettings().pressure_ev_a3 == 0.0 == RelaxSettings(fix_cell=True).pressure_ev_a3
    assert main(["relax", "Si", "--fix-cell", "--pressure", "1.0"]) == 2
    assert "with fix_cell" in capsys.readouterr().err


def test_counts_below_one_are_clear_errors(capsys):
    """A batch of 0 structures once failed deep in numpy ("need at least one array to concatenate"),
    issue 45 item 10; every count of md / relax is checked up front."""
    from ase.build import bulk

    from jaxmat.simulate import Engine

    assert main(["relax", "Si", "--engine", "jax", "--batch-size", "0"]) == 2
    assert "relax.batch_size = 0 (--batch-size): expected at least 1" in capsys.readouterr().err
    engine = Engine()
    si = bulk("Si", "diamond", 5.43, cubic=True)
    with pytest.raises(ConfigError, match=r"Engine.relax.graphs_per_batch = 0 \(int\): expected >= 1"):
        engine.relax([si], RelaxSettings(), graphs_per_batch=0)
    with pytest.warns(DeprecationWarning, match="now graphs_per_batch"), \
            pytest.raises(ConfigError, match=r"Engine.relax.graphs_per_batch = 0 \(int\)"):
        engine.relax([si], RelaxSettings(), batch_size=0)  # the old name still reaches the same check
    with pytest.raises(TypeError, match="not both"):
        engine.relax([si], RelaxSettings(), graphs_per_batch=2, batch_size=2)
    with pytest.raises(ConfigError, match=r"Engine.relax.chunk_steps = -1"):
        engine.relax([si], RelaxSettings(), chunk_steps=-1)
    with pytest.raises(ConfigError, match=r"Engine.md.chunk_steps = 0"):
        engine.md([si], MDSettings(steps=1), chunk_steps=0, trajectory=None)
    for args, match in ((["--replicas", "0"], "md.replicas = 0"), (["--devices", "0"], "md.devices = 0"),
                        (["--log-every", "0"], "md.log_every = 0"), (["--steps", "-1"], "md.steps = -1")):
        assert main(["md", "Si", "--engine", "jax", *args]) == 2
        assert match in capsys.readouterr().err
