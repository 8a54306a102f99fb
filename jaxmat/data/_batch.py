"""Labelled frames -> host graphs -> padded batches with a fixed budget (one compilation/epoch)."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from jaxmat.data._read import Frame
from jaxmat.errors import DatasetError
from jaxmat.graph import DEFAULT_CHECKS, PadSizes, StructureChecks, atoms_to_graph, batch_graphs, cast_floats, graph_sizes, pad_graph


class Labels(NamedTuple):
    """Padded targets; masks are False for padding and for missing labels.

    energy (G,) eV, n_atoms (G,), energy_mask (G,); forces (N, 3) eV/A, forces_mask (N,);
    stress (G, 3, 3) eV/A^3, stress_mask (G,); weight (G,): each structure's loss weight
    (``Frame.weight``), atom_weight (N,): the same per atom (for the force term).
    """

    energy: np.ndarray
    n_atoms: np.ndarray
    energy_mask: np.ndarray
    forces: np.ndarray
    forces_mask: np.ndarray
    stress: np.ndarray
    stress_mask: np.ndarray
    weight: np.ndarray
    atom_weight: np.ndarray


class Batch(NamedTuple):
    graph: object  # AtomicGraph
    labels: Labels


def build_graphs(frames: Sequence[Frame], model, checks: StructureChecks = DEFAULT_CHECKS) -> list:
    """Host graphs of all frames for ``model``'s cutoffs, through the structure ``checks``; errors
    name the file and frame."""
    graphs = []
    for f in frames:
        try:
            model.check_species(f.atoms.numbers)
            graphs.append(atoms_to_graph(f.atoms, model.cutoff, model.three_body_cutoff, checks))
        except ValueError as err:
            raise DatasetError(f"{f.source}: {err}") from None
    return graphs


def batch_budget(graphs, graphs_per_batch: int) -> PadSizes:
    """A fixed padding budget that holds any ``graphs_per_batch`` graphs of this dataset."""
    sizes = np.array([tuple(graph_sizes(g))[:3] for g in graphs])
    top = np.sort(sizes, axis=0)[::-1][:graphs_per_batch].sum(axis=0)
    return PadSizes(int(top[0]) + 1, int(top[1]) + 1, int(top[2]) + 1, graphs_per_batch + 1)


def pack(order, graphs, budget: PadSizes) -> list[list[int]]:
    """Greedily split ``order`` into consecutive groups that fit ``budget``."""
    groups, current, used = [], [], np.zeros(3, int)
    for i in order:
        s = np.array(tuple(graph_sizes(graphs[i]))[:3])
        if current and (len(current) + 1 >= budget.n_graph or np.any(used + s >= np.array(budget[:3]))):
            groups.append(current)
            current, used = [], np.zeros(3, int)
        if np.any(s >= np.array(budget[:3])):
            raise DatasetError(f"structure {i} ({s.tolist()} nodes/edges/triplets) exceeds the batch budget {budget}")
        current.append(i)
        used += s
    if current:
        groups.append(current)
    return groups


def make_batch(indices, frames, graphs, budget: PadSizes, dtype="float32") -> Batch:
    """Pad the graphs ``indices`` into one batch with its labels."""
    g = cast_floats(pad_graph(batch_graphs([graphs[i] for i in indices]), budget), dtype)
    G, N = budget.n_graph, budget.n_node
    energy, n_atoms, emask = np.zeros(G), np.ones(G), np.zeros(G, bool)
    forces, fmask = np.zeros((N, 3)), np.zeros(N, bool)
    stress, smask = np.zeros((G, 3, 3)), np.zeros(G, bool)
    weight, atom_weight = np.zeros(G), np.zeros(N)
    start = 0
    for k, i in enumerate(indices):
        f = frames[i]
        n = len(f.atoms)
        n_atoms[k] = n
        weight[k], atom_weight[start : start + n] = f.weight, f.weight
        if f.energy is not None:
            energy[k], emask[k] = f.energy, True
        if f.forces is not None:
            forces[start : start + n], fmask[start : start + n] = f.forces, True
        if f.stress is not None:
            stress[k], smask[k] = f.stress, True
        start += n
    arrays = (energy, n_atoms, emask, forces, fmask, stress, smask, weight, atom_weight)
    labels = Labels(*(np.asarray(a, dtype) if a.dtype.kind == "f" else a for a in arrays))
    return Batch(g, labels)


def epoch_groups(graphs, budget, seed: int, epoch: int, shuffle: bool = True) -> list[list[int]]:
    """Frame indices of each batch of one epoch: order fixed by (seed, epoch)."""
    order = np.arange(len(graphs))
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(len(graphs))
    return pack(order, graphs, budget)


def epoch_batches(frames, graphs, budget, seed: int, epoch: int, shuffle: bool = True, dtype="float32"):
    """The batches of one epoch: order fixed by (seed, epoch), so a resumed run replays it."""
    return [make_batch(idx, frames, graphs, budget, dtype) for idx in epoch_groups(graphs, budget, seed, epoch, shuffle)]


def split(n: int, valid_fraction: float, seed: int):
    """Seeded train/validation index split."""
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = int(round(n * valid_fraction))
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])
