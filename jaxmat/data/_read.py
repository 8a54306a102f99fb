"""Labelled structures from any file ``ase.io`` reads (extxyz, ASE db, VASP OUTCAR, ...).

Labels come from the frame's calculator results or from named ``info``/``arrays`` keys. Units
and signs are jaxmat's (see README, Conventions): energy eV, forces eV/A, stress eV/A^3 with ASE's
sign (negative under compression). ASE's own readers already convert VASP's kBar pressure-sign
stress to this convention; a named info key is taken as given, so a key holding GPa or the
opposite sign must be converted with ``stress_factor`` (e.g. ``-ase.units.GPa``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import ase.io
import numpy as np
from ase.stress import voigt_6_to_full_3x3_stress

from jaxmat.errors import DatasetError


class Frame(NamedTuple):
    """One labelled structure. ``stress`` is (3, 3) eV/A^3 or None (unlabelled); ``weight``
    multiplies the frame's energy, force and stress loss terms (1: the default)."""

    atoms: object
    energy: float | None
    forces: np.ndarray | None
    stress: np.ndarray | None
    source: str  # "file:frame" for error messages
    weight: float = 1.0


def _get(atoms, key, default_names):
    if key is not None:
        if key in atoms.info:
            return atoms.info[key]
        if key in atoms.arrays:
            return atoms.arrays[key]
        return None
    results = atoms.calc.results if atoms.calc is not None else {}
    for name in default_names:
        if name in results:
            return results[name]
    return None


def _numeric(value, label: str, key, where: str, scalar: bool = False):
    """A label as float64 (a float if ``scalar``); DatasetError naming frame and key otherwise."""
    if value is None:
        return None
    try:
        arr = np.asarray(value, np.float64)
        return float(arr.reshape(())) if scalar else arr
    except (TypeError, ValueError) as err:
        named = f" (key {key!r})" if key else ""
        raise DatasetError(f"{where}: the {label} label{named} is not {'a number' if scalar else 'numeric'}: "
                           f"{value!r:.60} ({err})") from None


def read_structures(path, index=":") -> list:
    """``ase.io.read(path, index)`` as a list of ``ase.Atoms``; every failure (missing file, unknown
    format, garbage, a malformed text file) is a ``DatasetError`` naming the file."""
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path} is a directory, not a structure file")
    if not path.is_file():
        raise DatasetError(f"file {path} does not exist")
    try:
        images = ase.io.read(path, index)
    except Exception as err:  # noqa: BLE001 - ase raises many types for unreadable files
        raise DatasetError(f"{path}: cannot be read by ase.io ({type(err).__name__}: {err})") from None
    images = images if isinstance(images, list) else [images]
    if not images:
        raise DatasetError(f"{path}: holds no structures")
    return images


def read_frames(
    path,
    index=":",
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    stress_factor: float = 1.0,
    require=("energy", "forces"),
) -> list[Frame]:
    """Read labelled frames; raise DatasetError naming the file and frame of any bad label.

    Args:
      path: a file ``ase.io.read`` understands.
      index: ase.io index (":" for all frames).
      energy_key, forces_key, stress_key: ``info``/``arrays`` names; None takes the calculator
        results (``energy``, ``forces``, ``stress``).
      stress_factor: multiplies stress values read from ``stress_key`` (unit/sign conversion).
      require: labels every frame must have ("energy", "forces", "stress").
    """
    path = Path(path)
    images = read_structures(path, index)
    frames = []
    for i, atoms in enumerate(images):
        where = f"{path}:{i}"
        if len(atoms) == 0:
            raise DatasetError(f"{where}: frame has no atoms")
        if not np.isfinite(atoms.positions).all():
            raise DatasetError(f"{where}: positions are not finite")
        energy = _get(atoms, energy_key, ("energy", "free_energy"))
        forces = _get(atoms, forces_key, ("forces",))
        stress = _get(atoms, stress_key, ("stress",))
        labels = {"energy": energy, "forces": forces, "stress": stress}
        for name in require:
            if labels[name] is None:
                raise DatasetError(f"{where}: required label '{name}' is missing")
        energy = _numeric(energy, "energy", energy_key, where, scalar=True)
        forces = _numeric(forces, "forces", forces_key, where)
        stress = _numeric(stress, "stress", stress_key, where)
        if stress is not None:
            stress = stress.reshape(-1)
        if energy is not None and not np.isfinite(energy):
            raise DatasetError(f"{where}: energy is not finite ({energy})")
        if forces is not None:
            if forces.shape != (len(atoms), 3):
                raise DatasetError(f"{where}: forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
            if not np.isfinite(forces).all():
                raise DatasetError(f"{where}: forces are not finite")
        if stress is not None:
            if stress.size == 6:
                stress = voigt_6_to_full_3x3_stress(stress)
            elif stress.size == 9:
                stress = stress.reshape(3, 3)
            else:
                raise DatasetError(f"{where}: stress has {stress.size} values, expected 6 or 9")
            if stress_key is not None:
                stress = stress * stress_factor
            if not np.isfinite(stress).all():
                raise DatasetError(f"{where}: stress is not finite")
            if not atoms.pbc.all():
                stress = None  # stress of a non-periodic frame is not defined: masked
        frames.append(Frame(atoms, energy, forces, stress, where))
    _warn_implausible_forces(frames, path)
    return frames


#: force components above this (eV/A) are far beyond DFT data near equilibrium or in MD: a unit slip
IMPLAUSIBLE_FORCE = 100.0


def _warn_implausible_forces(frames, path) -> None:
    worst = max(((float(np.abs(f.forces).max()), f.source) for f in frames if f.forces is not None and f.forces.size),
                default=(0.0, ""))
    if worst[0] > IMPLAUSIBLE_FORCE:
        warnings.warn(f"{path}: force components up to {worst[0]:.4g} eV/A ({worst[1]}): far above DFT forces of "
                      f"structures near equilibrium or in MD; are the labels in meV/A or another unit?", UserWarning,
                      stacklevel=3)
