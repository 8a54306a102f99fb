"""Graph containers: a ``jraph.GraphsTuple`` plus the three-body triplet arrays.

Conventions (the same everywhere in jaxmat):

* Edge ``e`` is the directed bond ``i -> j`` with ``i = senders[e]`` and ``j = receivers[e]``.
  Its vector is ``r_ij = pos[j] - pos[i] + shifts[e] @ cell``  (Angstrom), where ``shifts`` are
  integer lattice translations stored as floats. Both directions of every bond are present.
* A triplet ``t`` is an ordered pair of distinct bonds sharing the source atom,
  ``(edge_ij[t], edge_ik[t]) = (i -> j, i -> k)``; its message is summed onto bond ``i -> j``.
* Padded graphs carry boolean masks; padded nodes/edges/triplets belong to padding graphs whose
  ``globals["mask"]`` is False. Padded edges join a padding node to itself (zero length) and
  every model must treat them with a masked norm.
"""

from __future__ import annotations

from typing import NamedTuple

import jraph


class Triplets(NamedTuple):
    """Three-body index arrays.

    Attributes:
      edge_ij: (T,) int32, index of the bond i->j that receives the triplet message.
      edge_ik: (T,) int32, index of the neighbouring bond i->k.
      mask: (T,) bool, False for padding triplets.
      n_triplet: (G,) int32, triplets per graph.
    """

    edge_ij: object
    edge_ik: object
    mask: object
    n_triplet: object


class AtomicGraph(NamedTuple):
    """A (batch of) atomic structure(s) as a padded graph.

    ``graph`` is a ``jraph.GraphsTuple`` with

    * ``nodes``: ``positions`` (N, 3) float [A], ``species`` (N,) int32 atomic numbers
      (0 for padding), ``graph_index`` (N,) int32, ``mask`` (N,) bool;
    * ``edges``: ``shifts`` (E, 3) float integer cell shifts, ``mask`` (E,) bool;
    * ``globals``: ``cell`` (G, 3, 3) float [A] (rows are lattice vectors), ``pbc`` (G, 3) bool,
      ``mask`` (G,) bool;
    * ``senders``/``receivers`` (E,) int32, ``n_node``/``n_edge`` (G,) int32.
    """

    graph: jraph.GraphsTuple
    triplets: Triplets

    @property
    def n_graph(self) -> int:
        return int(self.graph.n_node.shape[0])
