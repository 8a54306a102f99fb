"""Zero-shot SevenNet-0 on the mlearn test splits, through the command a user types,
``jaxmat evaluate SevenNet-0 <file>``: the force MAE over all components of every frame must be torch
sevenn's own (0.13.0, float32, its ASE calculator, measured on this machine; issue 47) to 2e-4 eV/A."""

import contextlib
import io
import re

import pytest

from helpers import SHARED
from jaxmat.cli import main

MLEARN = SHARED / "data" / "mlearn"
TORCH_SEVENN = {"Si": 0.1329, "Mo": 0.3727, "Li": 0.0534, "Ni": 0.1096, "Cu": 0.0630}  # eV/A, test splits


@pytest.mark.skipif(not MLEARN.is_dir(), reason="needs ../shared/data/mlearn (the mlearn data set)")
@pytest.mark.slow  # Si ~25 s CPU, all five ~2.5 min: outside the 15-min default suite (test_sevennet's parity stays)
@pytest.mark.parametrize("element", TORCH_SEVENN)
def test_zero_shot_force_mae_equals_torch_sevenn(element):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["evaluate", "SevenNet-0", str(MLEARN / f"{element}_test.extxyz")]) == 0
    text = out.getvalue()
    assert "model SevenNet-0" in text
    mae = float(re.search(r"^forces\s+([0-9.]+)\s", text, re.M).group(1))
    assert abs(mae - TORCH_SEVENN[element]) < 2e-4, f"{element}: force MAE {mae} eV/A, torch sevenn {TORCH_SEVENN[element]}"
