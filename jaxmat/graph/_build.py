"""ase.Atoms -> AtomicGraph; batching several graphs; padding to fixed sizes."""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jraph
import numpy as np

from jaxmat.errors import NeighborOverflowError
from jaxmat.graph._neighbors import build_triplets, neighbor_edges
from jaxmat.graph._structure import (
    DEFAULT_CHECKS,
    StructureChecks,
    check_contacts,
    check_density,
    check_occupancy,
    check_structure,
    localize_positions,
)
from jaxmat.graph._types import AtomicGraph, Triplets


def atoms_to_graph(
    atoms,
    cutoff: float,
    three_body_cutoff: float | None = None,
    checks: StructureChecks = DEFAULT_CHECKS,
    neighbor_list=None,
) -> AtomicGraph:
    """Build the (unpadded, host/numpy) graph of one ``ase.Atoms``.

    Args:
      atoms: ``ase.Atoms`` (any PBC, any triclinic cell, cells smaller than the cutoff allowed).
      cutoff: bond cutoff in Angstrom.
      three_body_cutoff: triplets use bonds no longer than this; None means no triplets.
      checks: thresholds of the structure checks (collapse, neighbour and triplet caps); a
        structure that fails one raises ``StructureError`` (see ``jaxmat.graph._structure``).
      neighbor_list: optional reusable ``vesin.NeighborList`` for ``cutoff``.

    Positions are stored localised (wrapped into the cell along periodic directions, centred along
    the others), so the graph's coordinates stay small whatever the input's.
    """
    positions, cell, pbc = check_structure(atoms.positions, atoms.cell.array, atoms.pbc)
    check_occupancy(atoms.info)
    positions = localize_positions(positions, cell, pbc)
    n = positions.shape[0]
    check_density(n, cell, pbc, cutoff, checks)
    senders, receivers, shifts, dist = neighbor_edges(positions, cell, pbc, cutoff, neighbor_list)
    check_contacts(atoms.numbers, senders, receivers, dist, checks)
    if three_body_cutoff is None:
        ij = ik = np.zeros(0, np.int32)
    else:
        ij, ik = build_triplets(senders, dist, n, three_body_cutoff, checks)
    graph = jraph.GraphsTuple(
        nodes={
            "positions": positions,
            "species": np.asarray(atoms.numbers, np.int32),
            "graph_index": np.zeros(n, np.int32),
            "mask": np.ones(n, bool),
        },
        edges={"shifts": shifts.astype(np.float64), "mask": np.ones(senders.size, bool)},
        senders=senders,
        receivers=receivers,
        globals={"cell": cell[None], "pbc": pbc[None], "mask": np.ones(1, bool)},
        n_node=np.array([n], np.int32),
        n_edge=np.array([senders.size], np.int32),
    )
    triplets = Triplets(ij, ik, np.ones(ij.size, bool), np.array([ij.size], np.int32))
    return AtomicGraph(graph, triplets)


def batch_graphs(graphs: Sequence[AtomicGraph]) -> AtomicGraph:
    """Concatenate host graphs into one disjoint graph (indices are offset)."""
    gs = [g.graph for g in graphs]
    node_off = np.cumsum([0] + [int(g.n_node.sum()) for g in gs])[:-1]
    edge_off = np.cumsum([0] + [int(g.n_edge.sum()) for g in gs])[:-1]
    graph_off = np.cumsum([0] + [int(g.n_node.shape[0]) for g in gs])[:-1]

    def cat(get, offsets=None):
        parts = [get(g) for g in gs] if offsets is None else [get(g) + o for g, o in zip(gs, offsets)]
        return np.concatenate(parts)

    graph = jraph.GraphsTuple(
        nodes={
            "positions": cat(lambda g: g.nodes["positions"]),
            "species": cat(lambda g: g.nodes["species"]),
            "graph_index": cat(lambda g: g.nodes["graph_index"], graph_off),
            "mask": cat(lambda g: g.nodes["mask"]),
        },
        edges={k: cat(lambda g, k=k: g.edges[k]) for k in ("shifts", "mask")},
        senders=cat(lambda g: g.senders, node_off),
        receivers=cat(lambda g: g.receivers, node_off),
        globals={k: cat(lambda g, k=k: g.globals[k]) for k in ("cell", "pbc", "mask")},
        n_node=cat(lambda g: g.n_node),
        n_edge=cat(lambda g: g.n_edge),
    )
    ts = [g.triplets for g in graphs]
    triplets = Triplets(
        edge_ij=np.concatenate([t.edge_ij + o for t, o in zip(ts, edge_off)]),
        edge_ik=np.concatenate([t.edge_ik + o for t, o in zip(ts, edge_off)]),
        mask=np.concatenate([t.mask for t in ts]),
        n_triplet=np.concatenate([t.n_triplet for t in ts]),
    )
    return AtomicGraph(graph, triplets)


class PadSizes(NamedTuple):
    """Padded array sizes (totals, including the padding graph)."""

    n_node: int
    n_edge: int
    n_triplet: int
    n_graph: int


def graph_sizes(g: AtomicGraph) -> PadSizes:
    """Real (unpadded) sizes of a host graph."""
    return PadSizes(
        int(g.graph.n_node.sum()),
        int(g.graph.n_edge.sum()),
        int(g.triplets.n_triplet.sum()),
        int(g.graph.n_node.shape[0]),
    )


def sizing_triplets(g: AtomicGraph, three_body_cutoff: float, margin: float) -> int:
    """Triplets there would be with bonds up to ``three_body_cutoff + margin`` (host graph, numpy).

    Padding buckets sized from this count (not the instantaneous one) do not overflow when a
    neighbour shell sits on the three-body cutoff (diamond Ge's second shell at 4.0007 A: as atoms
    vibrate, the triplet count jumps between 12 and 240 per atom)."""
    G = g.graph
    cell = G.globals["cell"][G.nodes["graph_index"][G.senders]]
    vec = G.nodes["positions"][G.receivers] - G.nodes["positions"][G.senders] + np.einsum(
        "ei,eij->ej", G.edges["shifts"], cell)
    near = np.sqrt(np.sum(vec * vec, axis=1)) <= three_body_cutoff + margin
    counts = np.bincount(G.senders[near & G.edges["mask"]], minlength=int(G.n_node.sum())).astype(np.int64)
    return int(np.sum(counts * (counts - 1)))


def bucket_sizes(real: PadSizes, headroom: float = 1.0, multiple: int = 8) -> PadSizes:
    """Smallest sizes holding ``real`` times ``headroom`` plus one padding node/edge/triplet/graph,
    rounded up to a multiple of ``multiple``."""

    def up(x):
        return int(math.ceil((math.ceil(x * headroom) + 1) / multiple) * multiple)

    return PadSizes(up(real.n_node), up(real.n_edge), up(real.n_triplet), real.n_graph + 1)


def fits(real: PadSizes, sizes: PadSizes) -> bool:
    """True if a graph of ``real`` sizes can be padded to ``sizes`` (one padding slot each)."""
    return all(r < s for r, s in zip(real, sizes))


def grow_sizes(real: PadSizes, old: PadSizes | None, headroom: float, growth: float, grow: bool = True) -> PadSizes:
    """The one bucket-growth policy (the calculator's buckets, the jax engine's list capacity): the
    ``old`` padded sizes while they fit ``real`` (and are not 4x too large: a much smaller input does
    not drag the old padding along), else each overflowing dimension grown to
    max(needed x (1 + headroom), old x growth), so a slowly growing input compiles O(log n) times.
    ``grow=False`` raises ``NeighborOverflowError`` instead of growing."""
    fresh = bucket_sizes(real, 1.0 + headroom)
    if old is None or old.n_node > 4 * fresh.n_node or old.n_graph > 4 * fresh.n_graph:
        return fresh
    if fits(real, old):
        return old
    if not grow:
        names = ("atoms", "bonds", "triplets", "structures")
        over = [f"{k} {r} > capacity {o - 1}" for k, r, o in zip(names, real, old) if r >= o]
        raise NeighborOverflowError(
            f"the rebuilt neighbour list does not fit its fixed capacity ({', '.join(over)}); allow growth "
            "(grow=True) or give a larger capacity")
    return PadSizes(*(o if r < o else max(f, int(math.ceil(o * growth))) for r, o, f in zip(real, old, fresh)))


def pad_graph(g: AtomicGraph, sizes: PadSizes) -> AtomicGraph:
    """Pad a host graph to ``sizes``.

    Padding nodes sit at the origin with species 0; padding edges join the first padding node to
    itself; padding triplets point at the first padding edge. All of them belong to padding graphs
    (identity cell, ``mask`` False). The first padding graph holds all padding nodes/edges/triplets.
    """
    real = graph_sizes(g)
    if not fits(real, sizes):
        raise ValueError(f"graph of sizes {real} does not fit padding {sizes}")
    dn, de, dt, dg = (s - r for s, r in zip(sizes, real))
    G = g.graph
    pad_node, pad_edge = real.n_node, real.n_edge

    def ext(a, n, value):
        fill = np.full((n,) + a.shape[1:], value, dtype=a.dtype)
        return np.concatenate([a, fill])

    cell_pad = np.broadcast_to(np.eye(3), (dg, 3, 3))
    graph = jraph.GraphsTuple(
        nodes={
            "positions": ext(G.nodes["positions"], dn, 0.0),
            "species": ext(G.nodes["species"], dn, 0),
            "graph_index": ext(G.nodes["graph_index"], dn, real.n_graph),
            "mask": ext(G.nodes["mask"], dn, False),
        },
        edges={"shifts": ext(G.edges["shifts"], de, 0.0), "mask": ext(G.edges["mask"], de, False)},
        senders=ext(G.senders, de, pad_node),
        receivers=ext(G.receivers, de, pad_node),
        globals={
            "cell": np.concatenate([G.globals["cell"], cell_pad]),
            "pbc": ext(G.globals["pbc"], dg, False),
            "mask": ext(G.globals["mask"], dg, False),
        },
        n_node=np.concatenate([G.n_node, [dn] + [0] * (dg - 1)]).astype(np.int32),
        n_edge=np.concatenate([G.n_edge, [de] + [0] * (dg - 1)]).astype(np.int32),
    )
    t = g.triplets
    triplets = Triplets(
        edge_ij=ext(t.edge_ij, dt, pad_edge),
        edge_ik=ext(t.edge_ik, dt, pad_edge),
        mask=ext(t.mask, dt, False),
        n_triplet=np.concatenate([t.n_triplet, [dt] + [0] * (dg - 1)]).astype(np.int32),
    )
    return AtomicGraph(graph, triplets)


def cast_floats(g: AtomicGraph, dtype) -> AtomicGraph:
    """Cast the floating-point arrays (positions, shifts, cell) of a host graph to ``dtype``."""
    G = g.graph
    graph = G._replace(
        nodes={**G.nodes, "positions": np.asarray(G.nodes["positions"], dtype)},
        edges={**G.edges, "shifts": np.asarray(G.edges["shifts"], dtype)},
        globals={**G.globals, "cell": np.asarray(G.globals["cell"], dtype)},
    )
    return AtomicGraph(graph, g.triplets)
