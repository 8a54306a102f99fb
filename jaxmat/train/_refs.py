"""Per-element reference energies by least squares."""

from __future__ import annotations

import numpy as np
from ase.data import chemical_symbols


def composition_matrix(frames, element_types) -> np.ndarray:
    """(n_frames, n_types) atom counts per element type."""
    index = {s: k for k, s in enumerate(element_types)}
    counts = np.zeros((len(frames), len(element_types)))
    for i, f in enumerate(frames):
        for z in f.atoms.numbers:
            counts[i, index[chemical_symbols[z]]] += 1
    return counts


def fit_element_refs(frames, element_types, predicted=None, current=None) -> np.ndarray:
    """Least-squares per-element energies so that sum_i ref[type_i] fits the residual energies.

    Returns ``current + delta`` where ``delta`` minimises ||counts @ delta - (E_ref - predicted)||^2
    over the elements present (others keep ``current``). With ``predicted`` = model energies that
    include ``current`` refs, this refits the references of a (pretrained or fresh) model.
    """
    labelled = [f for f in frames if f.energy is not None]
    if not labelled:
        raise ValueError("no frame has an energy label: cannot fit element references")
    counts = composition_matrix(labelled, element_types)
    target = np.array([f.energy for f in labelled])
    if predicted is not None:
        target = target - np.asarray([p for f, p in zip(frames, predicted) if f.energy is not None])
    current = np.zeros(len(element_types)) if current is None else np.asarray(current, np.float64)
    present = counts.sum(axis=0) > 0
    delta, *_ = np.linalg.lstsq(counts[:, present], target, rcond=None)
    out = current.copy()
    out[present] += delta
    return out
