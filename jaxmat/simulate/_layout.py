"""Host-side layout of a batch: padded flat arrays <-> per-structure numpy arrays.

The batch's atoms are the structures' atoms one after another, then padding atoms (they belong to
the first padding structure), exactly as ``jaxmat.graph.pad_graph`` lays out the graph. A state is a
NamedTuple whose leaves are per atom (N, ...), per structure (G, ...) or scalars; ``unpack_systems`` cuts one
into per-structure numpy pieces and ``join`` pads such pieces back (to a possibly larger capacity),
so structures can leave or join a batch between chunks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase import units

from jaxmat.graph import PadSizes
from jaxmat.simulate._integrators import Systems


def pack_systems(systems, capacity: PadSizes, dtype, seeds=None, temperatures=None, masks=None) -> Systems:
    """The ``Systems`` of ``systems`` (``ase.Atoms``) padded to ``capacity``. ``masks``: None (no
    constraints: ``Systems.free`` is None) or one (n, 3) free mask per system (None: all free; see
    ``jaxmat.simulate._constraints.free_mask``); padding atoms are fixed."""
    n = [len(a) for a in systems]
    N, G = capacity.n_node, capacity.n_graph
    R = len(systems)
    gi = np.concatenate([np.full(k, r) for r, k in enumerate(n)] + [np.full(N - sum(n), R)]).astype(np.int32)
    local = np.concatenate([np.arange(k) for k in n] + [np.arange(N - sum(n))]).astype(np.int32)
    masses = np.concatenate([a.get_masses() for a in systems] + [np.ones(N - sum(n))])
    kt = np.zeros(G)
    kt[:R] = units.kB * np.asarray(temperatures if temperatures is not None else np.zeros(R), np.float64)
    sd = np.zeros(G, np.uint32)
    sd[:R] = np.asarray(seeds if seeds is not None else np.zeros(R), np.uint32)
    n_atoms = np.zeros(G)
    n_atoms[:R] = n
    free = None
    if masks is not None:
        rows = [np.ones((k, 3)) if m is None else np.asarray(m, np.float64) for k, m in zip(n, masks)]
        free = jnp.asarray(np.concatenate(rows + [np.zeros((N - sum(n), 3))]), dtype)
    return Systems(graph_index=jnp.asarray(gi), node_mask=jnp.asarray(np.arange(N) < sum(n)), local=jnp.asarray(local),
                 masses=jnp.asarray(masses, dtype), n_atoms=jnp.asarray(n_atoms, dtype),
                 graph_mask=jnp.asarray(np.arange(G) < R), seeds=jnp.asarray(sd), kT=jnp.asarray(kt, dtype),
                 periodic=jnp.asarray(np.array([all(a.pbc) for a in systems] + [False] * (G - R))), free=free)


def unpack_systems(state, sizes: list[int], node_fields: tuple) -> list[dict]:
    """Per-structure numpy copies (dicts) of a padded state NamedTuple: ``node_fields`` are per atom,
    the other array fields per structure, 0-d fields are copied into each piece."""
    host = jax.device_get(state)._asdict()
    offsets = np.cumsum([0] + list(sizes))
    pieces = []
    for r in range(len(sizes)):
        piece = {}
        for name, leaf in host.items():
            leaf = np.asarray(leaf)
            if name in node_fields:
                piece[name] = np.array(leaf[offsets[r]:offsets[r + 1]])
            else:
                piece[name] = np.array(leaf[r]) if leaf.ndim else np.array(leaf)
        pieces.append(piece)
    return pieces


def join(cls, pieces: list[dict], node_fields: tuple, capacity: PadSizes, padding: dict):
    """The padded state ``cls`` of the pieces: atoms padded with zeros, structures with
    ``padding[name]`` (a per-structure value for every non-node, non-scalar field)."""
    out = {}
    for name in cls._fields:
        leaves = [p[name] for p in pieces]
        if name in node_fields:
            real = np.concatenate(leaves)
            pad = np.zeros((capacity.n_node - real.shape[0],) + real.shape[1:], real.dtype)
            out[name] = jnp.asarray(np.concatenate([real, pad]))
        elif leaves[0].ndim == 0 and name not in padding:
            out[name] = jnp.asarray(leaves[0])
        else:
            real = np.stack(leaves)
            fill = np.broadcast_to(np.asarray(padding[name], real.dtype), real.shape[1:])
            pad = np.repeat(fill[None], capacity.n_graph - real.shape[0], axis=0)
            out[name] = jnp.asarray(np.concatenate([real, pad]))
    return cls(**out)
