"""MEGNet (Chen et al., Chem. Mater. 2019) as a pure Flax module: graph -> one scalar per graph.

Semantics of the pretrained matgl weights (DGL era, see ``../shared/README.md``): the node update
averages the updated features of the INCOMING bonds (destination = receiver); bond, atom and
state updates in that order, each seeing the already-updated features of the previous step;
Set2Set readouts over atoms and bonds plus the state vector feed the output MLP; the output is
de-normalised as ``y * target_std + target_mean``.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxmat._checks import at_least, chemical_symbols_rule, each, one_of, positive
from jaxmat.graph import AtomicGraph, edge_vectors, masked_norm
from jaxmat.models._common import segment_mean, type_table
from jaxmat.nn import ACTIVATIONS, MLP, Set2Set


class MEGNet(nn.Module):
    """Args (static config, stored in a bundle's ``config.json``):
      element_types: chemical symbols the model knows; type index = position in this list.
      dim_node_embedding: atom embedding width.
      n_gaussians, gauss_width, gauss_final: bond expansion exp(-w (r - mu_k)^2) with centres
        mu_k = linspace(0, gauss_final, n_gaussians) [A]; gauss_final None means cutoff + 1.
      dim_state: width of the global state input (zeros: the pretrained model's default state).
      nblocks: MEGNet blocks (block 0 without the pre-dense layers).
      hidden_input, hidden_conv, hidden_output: MLP widths of encoders, convolutions, output.
      niters_set2set: Set2Set iterations.
      activation: name in ``jaxmat.nn.ACTIVATIONS``.
      cutoff: bond cutoff [A].
      target_mean, target_std: output de-normalisation (target units, e.g. eV/atom).

    ``__call__(graph)`` returns (G,) predictions, one per graph (padding graphs: 0).
    """

    output_kind: ClassVar[str] = "graph"
    #: allowed values of the hyperparameters (checked by ``load_model`` and ``jaxmat train``)
    RULES: ClassVar[dict] = {
        "element_types": chemical_symbols_rule(), **{k: at_least(1) for k in (
            "dim_node_embedding", "n_gaussians", "dim_state", "nblocks", "niters_set2set")},
        **{k: each(at_least(1)) for k in ("hidden_input", "hidden_conv", "hidden_output")},
        "gauss_width": positive(), "gauss_final": positive(), "activation": one_of(*ACTIVATIONS),
        "cutoff": positive(), "target_std": positive()}

    element_types: Sequence[str]
    dim_node_embedding: int = 16
    n_gaussians: int = 100
    gauss_width: float = 0.5
    gauss_final: float | None = None
    dim_state: int = 2
    nblocks: int = 3
    hidden_input: Sequence[int] = (64, 32)
    hidden_conv: Sequence[int] = (64, 64, 32)
    hidden_output: Sequence[int] = (32, 16)
    niters_set2set: int = 2
    activation: str = "softplus2"
    cutoff: float = 4.0
    target_mean: float = 0.0
    target_std: float = 1.0

    @nn.compact
    def __call__(self, g: AtomicGraph):
        G = g.graph
        nodes, send, recv = G.nodes, G.senders, G.receivers
        n_node, n_edge, n_graph = nodes["species"].shape[0], send.shape[0], G.n_node.shape[0]
        nmask, emask = nodes["mask"], G.edges["mask"]
        node_graph = nodes["graph_index"]
        edge_graph = node_graph[send]
        types = jnp.asarray(type_table(self.element_types))[nodes["species"]]

        r = masked_norm(edge_vectors(g), emask, fill=1.0)
        dt = r.dtype
        final = self.cutoff + 1.0 if self.gauss_final is None else self.gauss_final
        centers = jnp.asarray(np.linspace(0.0, final, self.n_gaussians), dt)
        e = jnp.exp(-self.gauss_width * (r[:, None] - centers) ** 2)
        v = nn.Embed(len(self.element_types), self.dim_node_embedding, name="node_embedding")(types).astype(dt)
        u = jnp.zeros((n_graph, self.dim_state), dt)

        act, hin, hconv = self.activation, tuple(self.hidden_input), tuple(self.hidden_conv)
        e = MLP(hin, act, name="edge_encoder")(e)
        v = MLP(hin, act, name="node_encoder")(v)
        u = MLP(hin, act, name="state_encoder")(u)
        for b in range(self.nblocks):
            e0, v0, u0 = e, v, u
            if b > 0:
                e = MLP(hin, act, name=f"block_{b}_edge_dense")(e)
                v = MLP(hin, act, name=f"block_{b}_node_dense")(v)
                u = MLP(hin, act, name=f"block_{b}_state_dense")(u)
            e = MLP(hconv, act, name=f"block_{b}_edge")(
                jnp.concatenate([v[send], v[recv], e, u[edge_graph]], axis=-1))
            v_in = segment_mean(e, recv, emask, n_node)
            v = MLP(hconv, act, name=f"block_{b}_node")(jnp.concatenate([v, v_in, u[node_graph]], axis=-1))
            u_in = [segment_mean(e, edge_graph, emask, n_graph), segment_mean(v, node_graph, nmask, n_graph)]
            u = MLP(hconv, act, name=f"block_{b}_state")(jnp.concatenate([u] + u_in, axis=-1))
            e, v, u = e + e0, v + v0, u + u0

        s2s = dict(n_iters=self.niters_set2set)
        node_vec = Set2Set(**s2s, name="node_set2set")(v, node_graph, nmask, n_graph)
        edge_vec = Set2Set(**s2s, name="edge_set2set")(e, edge_graph, emask, n_graph)
        x = jnp.concatenate([node_vec, edge_vec, u], axis=-1)
        y = MLP(tuple(self.hidden_output) + (1,), act, activate_last=False, name="output")(x)[:, 0]
        return (y * self.target_std + self.target_mean) * G.globals["mask"]
