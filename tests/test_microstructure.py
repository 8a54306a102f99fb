"""Cahn-Hilliard solver, finite-volume conductivity vs exact laminates and Hashin-Shtrikman
bounds, the CNN head, and the CNN experiment driver (smoke)."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmat.microstructure import (
    CNN, conductivity_along, effective_conductivity, evolve, free_energy, generate, hashin_shtrikman_2d, initial_field,
)

ROOT = Path(__file__).resolve().parents[1]


def test_cahn_hilliard_conserves_mass_and_lowers_free_energy():
    with jax.enable_x64(True):
        c0 = initial_field(jax.random.PRNGKey(0), 32, 0.4)
        energies, c = [float(free_energy(c0))], c0
        for _ in range(4):
            c = evolve(c, 100)
            energies.append(float(free_energy(c)))
        assert float(c.mean()) == pytest.approx(float(c0.mean()), abs=1e-12) and float(c0.mean()) == pytest.approx(-0.2)
        assert all(b < a for a, b in zip(energies, energies[1:])), energies
        assert float(jnp.mean(jnp.abs(c))) > 0.6 > float(jnp.mean(jnp.abs(c0)))  # separating into c ~ +-1 domains


def test_conductivity_exact_cases():
    with jax.enable_x64(True):
        assert float(effective_conductivity(jnp.ones((8, 8)))) == pytest.approx(10.0)
        assert float(effective_conductivity(jnp.zeros((8, 8)))) == pytest.approx(1.0)
        stripes = jnp.where(jnp.zeros((16, 16)).at[:4].set(1.0) > 0.5, 10.0, 1.0)  # 1/4 of rows conduct
        assert float(conductivity_along(stripes, 1)) == pytest.approx(0.25 * 10 + 0.75, rel=1e-9)  # parallel
        assert float(conductivity_along(stripes, 0)) == pytest.approx(1 / (0.25 / 10 + 0.75), rel=1e-6)  # series


def test_generated_labels_respect_hashin_shtrikman():
    data = generate(24, size=32, seed=1, steps=(200, 600), mixing=(0.3, 0.7), chunk=12)
    lo, hi = hashin_shtrikman_2d(data.fraction)
    assert np.all(data.conductivity >= lo * (1 - 2e-3)) and np.all(data.conductivity <= hi * (1 + 2e-3))
    assert np.all(lo < hi) and set(np.unique(data.images)) <= {0.0, 1.0}
    assert np.corrcoef(data.fraction, data.conductivity)[0, 1] > 0.9


def test_cnn_shapes_and_periodic_shift_invariance():
    model = CNN(widths=(4, 8, 8), dense=(8,))
    x = jax.random.bernoulli(jax.random.PRNGKey(0), 0.5, (3, 32, 32)).astype(jnp.float32)
    v = model.init(jax.random.PRNGKey(1), x)
    y = model.apply(v, x)
    assert y.shape == (3,)
    shifted = jnp.roll(x, (8, -4), axis=(1, 2))  # multiples of the total pooling factor 4
    np.testing.assert_allclose(model.apply(v, shifted), y, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # (default suite under 15 min on 2 cores; run with -m slow)
def test_cnn_driver_smoke(tmp_path):
    cfg = json.loads((ROOT / "experiments" / "cnn" / "config.json").read_text())
    cfg["data"].update(size=32, steps=[100, 300])
    cfg["cnn"].update(widths=[4, 8], dense=[8])
    cfg["fit"].update(batch_size=8)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "cnn" / "run.py"), str(tmp_path / "cfg.json"),
                          "--n-samples", "60", "--max-epochs", "2"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    assert "phase-fraction polynomial" in table and "| CNN" in table
    assert (tmp_path / "parity.png").is_file() and (tmp_path / "examples.png").is_file()
