"""The sevenn converter: the shipped SevenNet-0 bundle is exactly what ``jaxmat convert`` makes from
sevenn's checkpoint; the other single-fidelity checkpoints convert and match torch sevenn; the
multi-fidelity one is refused by name.

These need torch and sevenn, which jaxmat never imports at run time: they run in sevenn's own
Python, named by ``JAXMAT_SEVENN_PYTHON`` (default ``../venvs/sevenn/bin/python`` beside the
repository), with this checkout on its PYTHONPATH; without one they are skipped. The checks of the
checkpoint mapping that need no torch run everywhere.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import ase.io
import jax
import numpy as np
import pytest

import jaxmat
from jaxmat.convert import ConversionError, sevennet_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SEVENN_PYTHON = Path(os.environ.get("JAXMAT_SEVENN_PYTHON", ROOT.parent / "venvs" / "sevenn" / "bin" / "python"))


def _run(args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([str(SEVENN_PYTHON), *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def pretrained_dir():
    """sevenn's pretrained_potentials folder, found by sevenn's own Python (skips without it)."""
    if not SEVENN_PYTHON.is_file():
        pytest.skip(f"no Python with torch and sevenn at {SEVENN_PYTHON} (set JAXMAT_SEVENN_PYTHON)")
    probe = _run(["-c", "import torch, sevenn, jax, flax, e3nn_jax, pathlib; "
                        "print(pathlib.Path(sevenn.__file__).parent / 'pretrained_potentials')"])
    if probe.returncode:
        pytest.skip(f"{SEVENN_PYTHON} cannot import torch, sevenn and jaxmat's dependencies: "
                    f"{probe.stderr.strip().splitlines()[-1:]}")
    return Path(probe.stdout.strip())


def _convert(src: Path, dst: Path, name=None):
    res = _run(["-m", "jaxmat.cli", "convert", str(src), str(dst)] + (["--name", name] if name else []))
    assert res.returncode == 0, res.stderr
    return jaxmat.load_model(dst)


def test_convert_matches_shipped_sevennet0_and_refuses_multifidelity(pretrained_dir, tmp_path):
    """One process of sevenn's Python: ``jaxmat convert`` of SevenNet-0 gives the shipped bundle
    bit for bit; SevenNet-MF-0 is refused, naming its fidelities, and nothing is written."""
    script = ("from jaxmat.cli import main\n"
              f"print('RC', main(['convert', {str(pretrained_dir / 'SevenNet_0__11Jul2024' / 'checkpoint_sevennet_0.pth')!r}, "
              f"{str(tmp_path / 'SevenNet-0')!r}, '--name', 'SevenNet-0']))\n"
              f"print('RC', main(['convert', {str(pretrained_dir / 'SevenNet_MF_0' / 'checkpoint_sevennet_mf_0.pth')!r}, "
              f"{str(tmp_path / 'mf')!r}]))\n")
    res = _run(["-c", script])
    assert res.returncode == 0, res.stderr
    assert [line for line in res.stdout.splitlines() if line.startswith("RC")] == ["RC 0", "RC 2"]
    assert "multi-fidelity" in res.stderr and "R2SCAN, PBE" in res.stderr
    assert not (tmp_path / "mf").exists()
    converted = jaxmat.load_model(tmp_path / "SevenNet-0")
    shipped = jaxmat.load_model("SevenNet-0")
    assert converted.family == shipped.family == "SevenNet"
    assert converted.hyperparameters == shipped.hyperparameters
    flat = jax.tree_util.tree_flatten_with_path
    assert [k for k, _ in flat(converted.params)[0]] == [k for k, _ in flat(shipped.params)[0]]
    for a, b in zip(jax.tree_util.tree_leaves(converted.params), jax.tree_util.tree_leaves(shipped.params)):
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "SevenNet-0" / "LICENSE").read_text().startswith("MIT License")
    assert converted.metadata["source_checkpoint_sha256"] == shipped.metadata["source_checkpoint_sha256"]


@pytest.mark.slow
@pytest.mark.parametrize("folder,file", [("SevenNet_0__22May2024", "checkpoint_sevennet_0.pth"),
                                         ("SevenNet_l3i5", "checkpoint_l3i5.pth")])
def test_other_checkpoints_match_torch(pretrained_dir, tmp_path, folder, file):
    """22May2024 (old module names, unnormalised harmonics) and l3i5 (l = 3, polynomial cutoff)
    against torch sevenn on four structures of the parity set, float32 both."""
    from jaxmat.calculators import JaxmatCalculator

    src = pretrained_dir / folder / file
    model = _convert(src, tmp_path / folder)
    frames = ase.io.read(Path(__file__).parent / "fixtures" / "sevennet0_parity.extxyz", ":")
    picked = [a for a in frames if a.info["name"] in ("ethanol_molecule", "Al_one_atom_triclinic",
                                                      "TiO2_rutile_rattled", "SiAlNaO_random_dense")]
    for a in picked:
        a.calc = None
    ase.io.write(tmp_path / "in.extxyz", picked)
    res = _run([str(ROOT / "scripts" / "sevenn_reference.py"), str(tmp_path / "ref.extxyz"), "--checkpoint", str(src),
                "--structures", str(tmp_path / "in.extxyz")])
    assert res.returncode == 0, res.stderr
    calc = JaxmatCalculator(model)
    for ref in ase.io.read(tmp_path / "ref.extxyz", ":"):
        atoms = ref.copy()
        atoms.calc = calc
        n = len(atoms)
        assert abs(atoms.get_potential_energy() - ref.get_potential_energy()) / n < 5e-5, ref.info["name"]
        np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), atol=5e-4, rtol=0)
        if ref.pbc.all():
            np.testing.assert_allclose(atoms.get_stress(), ref.get_stress(), atol=5e-5, rtol=0)


# --- the mapping's refusals, without torch ---------------------------------------------------------

BASE = {"version": "0.13.0", "interaction_type": "nequip", "is_parity": False, "self_connection_type": "linear"}


@pytest.mark.parametrize("over,match", [
    ({"use_modality": True, "_modal_map": {"R2SCAN": 0, "PBE": 1}}, "multi-fidelity.*R2SCAN, PBE"),
    ({"is_parity": True}, "is_parity"),
    ({"self_connection_type": "nequip"}, "self_connection_type"),
    ({"act_gate": {"e": "tanh", "o": "tanh"}}, "act_gate"),
    ({"readout_as_fcn": True}, "readout_as_fcn"),
])
def test_unsupported_checkpoints_are_refused(over, match):
    with pytest.raises(ConversionError, match=match):
        sevennet_from_checkpoint({**BASE, **over}, {})


def test_missing_or_stray_tensors_are_refused():
    """A state dict that lacks a weight, or holds one the port has no place for, is an error, never a
    silently different model."""
    cfg = {**BASE, "chemical_species": ["H", "O"], "_type_map": {1: 0, 8: 1}, "irreps_manual": ["4x0e", "4x0e"],
           "num_convolution_layer": 1, "lmax": 1, "lmax_edge": -1, "cutoff": 5.0,
           "cutoff_function": {"cutoff_function_name": "XPLOR", "cutoff_on": 4.5},
           "radial_basis": {"radial_basis_name": "bessel", "bessel_basis_num": 2}, "weight_nn_hidden_neurons": [3]}
    sd = {"0_convolution.denominator": np.ones(1), "onehot_to_feature_x.linear.weight": np.ones(8),
          "0_self_connection_intro.linear.weight": np.ones(16), "0_self_interaction_1.linear.weight": np.ones(16),
          "0_convolution.weight_nn.layer0.weight": np.ones((2, 3)),
          "0_convolution.weight_nn.layer1.weight": np.ones((3, 4)),
          "0_self_interaction_2.linear.weight": np.ones(16), "reduce_input_to_hidden.linear.weight": np.ones(8),
          "reduce_hidden_to_energy.linear.weight": np.ones(2), "rescale_atomic_energy.shift": np.zeros(2),
          "rescale_atomic_energy.scale": np.ones(2)}
    hyper, params = sevennet_from_checkpoint(cfg, sd)  # the complete dict maps
    assert hyper["irreps"] == ["4x0e", "4x0e"] and params["energy_scale"]["scale"] == 1.0
    with pytest.raises(ConversionError, match="missing tensor 0_self_interaction_1"):
        sevennet_from_checkpoint(cfg, {k: v for k, v in sd.items() if "interaction_1" not in k})
    with pytest.raises(ConversionError, match="extra.weight"):
        sevennet_from_checkpoint(cfg, {**sd, "extra.weight": np.ones(3)})
    with pytest.raises(ConversionError, match="has 15 weights, expected 16"):
        sevennet_from_checkpoint(cfg, {**sd, "0_self_interaction_1.linear.weight": np.ones(15)})
