"""Bad input gives a clear error, never a silent wrong number."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError

from jaxmat.graph import StructureError
from jaxmat.models import UnknownElementError


def _energy(calc, atoms):
    atoms.calc = calc
    return atoms.get_potential_energy()


def test_unknown_element(calc32):
    with pytest.raises(UnknownElementError, match="Og"):
        _energy(calc32, Atoms("SiOg", positions=[[0, 0, 0], [2, 0, 0]]))
    with pytest.raises(UnknownElementError, match="Po"):  # Po is not among the 89 elements
        _energy(calc32, Atoms("Po2", positions=[[0, 0, 0], [2.5, 0, 0]]))


@pytest.mark.parametrize("cell", [np.zeros((3, 3)), [[3, 0, 0], [0, 3, 0], [3, 3, 0]], [[3, 0, 0], [0, 3, 0], [0, 0, -3]]])
def test_zero_or_negative_volume(calc32, cell):
    atoms = Atoms("Si2", positions=[[0, 0, 0], [1.3, 1.3, 1.3]], cell=cell, pbc=True)
    with pytest.raises(StructureError, match="volume"):
        _energy(calc32, atoms)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_positions(calc32, bad):
    atoms = bulk("Si", "diamond", 5.43)
    atoms.positions[1, 2] = bad
    with pytest.raises(StructureError, match="not finite"):
        _energy(calc32, atoms)


def test_overlapping_atoms(calc32):
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.positions[3] = atoms.positions[5]
    with pytest.raises(StructureError, match="overlap"):
        _energy(calc32, atoms)
    # also through a periodic image
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.positions[0] = atoms.positions[1] + atoms.cell[0]
    with pytest.raises(StructureError, match="overlap"):
        _energy(calc32, atoms)


def test_empty_atoms(calc32):
    with pytest.raises(StructureError, match="no atoms"):
        _energy(calc32, Atoms())


def test_stress_of_non_periodic_structure_is_an_error(calc32):
    atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    atoms.calc = calc32
    assert np.isfinite(atoms.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError, match="periodic in all three"):
        atoms.get_stress()


def test_bad_dtype():
    from jaxmat.calculators import JaxmatCalculator

    with pytest.raises(ValueError, match="dtype"):
        JaxmatCalculator(dtype="float16")
