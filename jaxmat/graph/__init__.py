"""Atomic graphs: host construction (neighbour lists, triplets), batching, padding, geometry."""

from jaxmat.errors import StructureError
from jaxmat.graph._build import (
    PadSizes,
    atoms_to_graph,
    batch_graphs,
    bucket_sizes,
    cast_floats,
    fits,
    graph_sizes,
    grow_sizes,
    pad_graph,
    sizing_triplets,
)
from jaxmat.graph._geometry import edge_vectors, masked_norm
from jaxmat.graph._neighbors import CUTOFF_TOLERANCE, build_triplets, neighbor_edges
from jaxmat.graph._structure import (
    DEFAULT_CHECKS,
    StructureChecks,
    check_structure,
    lattice_basis,
    localize_positions,
)
from jaxmat.graph._types import AtomicGraph, Triplets

__all__ = [
    "AtomicGraph",
    "CUTOFF_TOLERANCE",
    "DEFAULT_CHECKS",
    "PadSizes",
    "StructureChecks",
    "StructureError",
    "Triplets",
    "atoms_to_graph",
    "batch_graphs",
    "bucket_sizes",
    "build_triplets",
    "cast_floats",
    "check_structure",
    "edge_vectors",
    "fits",
    "grow_sizes",
    "graph_sizes",
    "lattice_basis",
    "sizing_triplets",
    "localize_positions",
    "masked_norm",
    "neighbor_edges",
    "pad_graph",
]
