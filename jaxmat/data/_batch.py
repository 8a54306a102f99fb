"""Labelled frames -> host graphs -> padded batches with a fixed budget (one compilation per budget)."""

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


#: sampled groups from which ``pad_budgets`` chooses its smaller budgets
_BUDGET_SAMPLES = 2000
#: ``pad_budget_count``: a run of at least this many training steps gets a 2nd, 3rd, 4th budget. Each
#: costs two compilations (train and eval step: ~20 s of one core for the small M3GNet) and saves
#: less than the one before (mlearn Si: 12 %, then 1.5 % and 1 % of the padded edges, at ~0.45 s of
#: one core per step), so each is added about where it has paid for itself.
BUDGET_STEPS = (1000, 4000, 8000)


def pad_budget_count(steps: int) -> int:
    """How many padding budgets (``pad_budgets``) a run of ``steps`` training steps uses: 1 for
    short runs (tests, quick fits: one compilation), up to 4 for long ones (``BUDGET_STEPS``)."""
    return 1 + sum(int(steps) >= s for s in BUDGET_STEPS)


def pad_budgets(graphs, graphs_per_batch: int, n: int = 1) -> list[PadSizes]:
    """Up to ``n`` padding budgets, cheapest first; the last is ``batch_budget`` (it holds any group).

    Batches are made by ``pack`` against the last budget (so which frames form which batch does not
    depend on ``n``), then each is padded to the cheapest budget it fits (``fitting_budget``): one
    compilation per budget, less padding per step. The smaller budgets are chosen greedily, each
    minimising the mean padded cost (``_pad_cost``) of ``_BUDGET_SAMPLES`` random groups of
    ``graphs_per_batch`` graphs (a fixed seed: the same data gives the same budgets), from candidates
    at quantiles of those groups' sizes. Measured on mlearn Si (214 frames, 4 per batch, 10 epochs):
    4 budgets pad 0.85x the edges of one (0.80x would be no padding at all), and a training step
    took 11 % less CPU time (one core).
    """
    top = batch_budget(graphs, graphs_per_batch)
    if n <= 1 or len(graphs) <= graphs_per_batch:
        return [top]
    sizes = np.array([tuple(graph_sizes(g))[:3] for g in graphs])
    rng = np.random.default_rng(0)
    totals = np.array([sizes[rng.choice(len(graphs), graphs_per_batch, replace=False)].sum(0)
                       for _ in range(_BUDGET_SAMPLES)])
    cands = {PadSizes(*(int(x) + 1 for x in np.quantile(totals, q, axis=0, method="higher")), top.n_graph)
             for q in np.linspace(0.05, 0.95, 19)}
    cands = [c for c in cands if all(x <= t for x, t in zip(c, top)) and c != top]
    budgets = [top]

    def mean_cost(bs):
        cost = np.full(len(totals), _pad_cost(top))
        for b in bs:
            fit = np.all(totals < np.array(b[:3]), axis=1)
            cost = np.where(fit, np.minimum(cost, _pad_cost(b)), cost)
        return cost.mean()

    while len(budgets) < n and cands:
        best = min(cands, key=lambda c: mean_cost(budgets + [c]))
        if mean_cost(budgets + [best]) >= mean_cost(budgets):
            break
        budgets.append(best)
        cands.remove(best)
    return sorted(budgets, key=_pad_cost)


def _pad_cost(b: PadSizes) -> float:
    """Relative cost of a step padded to ``b``: per-edge work dominates (64-wide features through the
    gated MLPs); a triplet carries a 9-wide basis, a node one edge's worth."""
    return b.n_edge + b.n_node + 0.01 * b.n_triplet


def fitting_budget(indices, graphs, budgets) -> PadSizes:
    """The first of ``budgets`` (cheapest first, ``pad_budgets``; or one ``PadSizes``) that the graphs
    ``indices`` fit."""
    if isinstance(budgets, PadSizes):
        return budgets
    used = np.sum([tuple(graph_sizes(graphs[i]))[:3] for i in indices], axis=0)
    for b in budgets:
        if len(indices) < b.n_graph and np.all(used < np.array(b[:3])):
            return b
    raise DatasetError(f"structures {list(indices)} ({used.tolist()} nodes/edges/triplets) exceed the batch budget "
                       f"{budgets[-1]}")


def pack(order, graphs, budget) -> list[list[int]]:
    """Greedily split ``order`` into consecutive groups that fit ``budget`` (a ``PadSizes``, or the
    list of ``pad_budgets``, whose last, largest budget decides)."""
    budget = budget if isinstance(budget, PadSizes) else budget[-1]
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


def make_batch(indices, frames, graphs, budget, dtype="float32") -> Batch:
    """Pad the graphs ``indices`` into one batch with its labels; ``budget``: a ``PadSizes``, or the
    list of ``pad_budgets`` (the cheapest that fits is used)."""
    budget = fitting_budget(indices, graphs, budget)
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
