"""M3GNet (Chen & Ong, Nat. Comput. Sci. 2022) as a pure Flax module: graph -> per-atom energies.

Semantics match the pretrained matgl weights (see ``../shared/README.md``): node messages of bond
i->j are summed onto the destination atom j; triplets are ordered pairs of distinct bonds
(i->j, i->k) within the three-body cutoff, gated by atom k and summed onto bond i->j.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxmat._checks import Rule, at_least, chemical_symbols_rule, one_of, positive
from jaxmat.graph import AtomicGraph, edge_vectors, masked_norm
from jaxmat.models._common import type_table
from jaxmat.nn import (
    EquivariantInteraction,
    GatedMLP,
    polynomial_cutoff,
    real_spherical_harmonics_m0,
    smooth_spherical_bessel,
    spherical_bessel,
)

RBF_TYPES = ("spherical_bessel", "smooth_spherical_bessel")
#: "three_body": M3GNet (three-body + graph convolution); "two_body": the graph convolution only;
#: "equivariant": NequIP-style e3nn blocks instead (``jaxmat.nn.EquivariantInteraction``).
INTERACTIONS = ("three_body", "two_body", "equivariant")


class EnergyScale(nn.Module):
    """E_i = scale * e_i + element_ref[type_i] + shift / n_atoms(graph of i)   [eV].

    ``shift`` is matgl's ``data_mean`` buffer: a constant added to each structure's *total* energy,
    so it is not extensive (a 2-atom cell and its 54-atom supercell would differ by shift * (1/2 -
    1/54) eV/atom). It is zero in the pretrained PES model, kept only for parity with converted
    checkpoints, and listed in ``M3GNet.constant_params`` so that training never moves it.
    """

    n_types: int

    @nn.compact
    def __call__(self, e, types, n_atoms_of_node):
        refs = self.param("element_refs", nn.initializers.zeros, (self.n_types,))
        scale = self.param("scale", nn.initializers.ones, ())
        shift = self.param("shift", nn.initializers.zeros, ())
        dt = e.dtype
        return scale.astype(dt) * e + refs.astype(dt)[types] + shift.astype(dt) / n_atoms_of_node


class M3GNet(nn.Module):
    """Args (all static config, stored in a bundle's ``config.json``):
      element_types: chemical symbols the model knows; type index = position in this list.
      dim_node, dim_edge: embedding widths.
      units: hidden width of the gated MLPs.
      max_n, max_l: radial / angular basis sizes.
      nblocks: number of (three-body + graph convolution) blocks.
      cutoff, threebody_cutoff: Angstrom.
      rbf_type: "spherical_bessel" (non-smooth, M3GNet-MP-2021.2.8) or "smooth_spherical_bessel".
      readout_features: widths of the per-atom readout gated MLP (last must be 1).
      interaction: one of ``INTERACTIONS`` (ablations swap the block, the rest stays).
      equivariant_irreps: node irreps of the equivariant blocks (None: "<dim_node>x0e + 16x1o + 8x2e").

    ``__call__(graph)`` returns per-atom energies (N,) in eV (zero on padding nodes).
    """

    output_kind: ClassVar[str] = "atoms"
    #: parameters that training never updates (see ``EnergyScale``)
    constant_params: ClassVar[tuple] = ("energy_scale/shift",)
    #: allowed values of the hyperparameters (checked by ``load_model`` and ``jaxmat train``)
    RULES: ClassVar[dict] = {
        "element_types": chemical_symbols_rule(), **{k: at_least(1) for k in (
            "dim_node", "dim_edge", "units", "max_n", "max_l", "nblocks")},
        "cutoff": positive(), "threebody_cutoff": positive(), "rbf_type": one_of(*RBF_TYPES),
        "readout_features": Rule(lambda v: len(v) > 0 and min(v) >= 1 and v[-1] == 1, "positive widths ending in 1"),
        "interaction": one_of(*INTERACTIONS)}

    element_types: Sequence[str]
    dim_node: int = 64
    dim_edge: int = 64
    units: int = 64
    max_n: int = 3
    max_l: int = 3
    nblocks: int = 3
    cutoff: float = 5.0
    threebody_cutoff: float = 4.0
    rbf_type: str = "spherical_bessel"
    readout_features: Sequence[int] = (64, 64, 64, 1)
    interaction: str = "three_body"
    equivariant_irreps: str | None = None

    def radial(self, r):
        """Bond basis (E, K): K = max_l*max_n (non-smooth) or max_n (smooth)."""
        if self.rbf_type == "spherical_bessel":
            return spherical_bessel(r, self.cutoff, self.max_l, self.max_n)
        if self.rbf_type == "smooth_spherical_bessel":
            return smooth_spherical_bessel(r, self.cutoff, self.max_n)
        raise ValueError(f"unknown rbf_type {self.rbf_type!r}; expected one of {RBF_TYPES}")

    def invariant_blocks(self, g: AtomicGraph, v, vec, r, rbf):
        """M3GNet blocks: (optional) three-body bond update, then edge and node graph convolution."""
        G, T = g.graph, g.triplets
        send, recv, emask = G.senders, G.receivers, G.edges["mask"]
        n_node, n_edge = v.shape[0], send.shape[0]
        three_body = self.interaction == "three_body"
        if three_body:  # three-body basis, computed once: radial(r_ik) x Y_l^0(cos theta_jik), cut off smoothly
            ij, ik = T.edge_ij, T.edge_ik
            cos = jnp.sum(vec[ij] * vec[ik], axis=1) / (r[ij] * r[ik])
            cos = jnp.clip(cos, -1.0 + 1e-7, 1.0 - 1e-7)
            if self.rbf_type == "spherical_bessel":
                radial3 = rbf[ik]
            else:
                radial3 = smooth_spherical_bessel(r, self.cutoff, self.max_n * self.max_l)[ik]
            angular = jnp.repeat(real_spherical_harmonics_m0(cos, self.max_l), self.max_n, axis=1)
            f3 = polynomial_cutoff(r, self.threebody_cutoff) * emask
            weight = f3[ij] * f3[ik] * T.mask
            basis3 = radial3 * angular * weight[:, None]  # (T, max_l*max_n)
            k_atom = recv[ik]

        e = jax.nn.silu(nn.Dense(self.dim_edge, name="edge_embedding")(rbf))
        degree3 = self.max_n * self.max_l
        hidden = (self.units, self.units)
        for b in range(self.nblocks):
            if three_body:  # three-body interaction -> bond update
                gate = jax.nn.sigmoid(nn.Dense(degree3, name=f"three_body_{b}_atom")(v))
                m3 = jax.ops.segment_sum(
                    basis3 * gate[k_atom], ij, num_segments=n_edge, indices_are_sorted=True
                )
                e = e + GatedMLP((self.dim_edge,), use_bias=False, name=f"three_body_{b}_bond")(m3)
            # graph convolution: edge update, then node update summed onto the destination atom
            parts = lambda e_: [(v, send), (v, recv), (e_, None)]  # noqa: E731
            w_e = nn.Dense(self.dim_edge, use_bias=False, name=f"conv_{b}_edge_weight")(rbf)
            e = e + GatedMLP(hidden + (self.dim_edge,), name=f"conv_{b}_edge")(parts=parts(e)) * w_e
            w_v = nn.Dense(self.dim_node, use_bias=False, name=f"conv_{b}_node_weight")(rbf)
            msg = GatedMLP(hidden + (self.dim_node,), name=f"conv_{b}_node")(parts=parts(e)) * w_v
            msg = msg * emask[:, None]
            v = v + jax.ops.segment_sum(msg, recv, num_segments=n_node, indices_are_sorted=True)
        return v

    def equivariant_blocks(self, v, vec, r, rbf, send, recv, emask):
        """NequIP-style blocks on (scalar + vector + tensor) node features; returns the scalars."""
        irreps = self.equivariant_irreps or f"{self.dim_node}x0e + 16x1o + 8x2e"
        if e3nn.Irreps(irreps).count("0e") != self.dim_node:
            raise ValueError(f"equivariant_irreps {irreps!r} must hold dim_node={self.dim_node} scalars (0e)")
        envelope = polynomial_cutoff(r, self.cutoff) * emask
        h = e3nn.IrrepsArray(f"{self.dim_node}x0e", v)
        for b in range(self.nblocks):
            h = EquivariantInteraction(irreps, radial_hidden=(self.units,), name=f"equivariant_{b}")(
                h, vec, rbf, envelope, send, recv, emask)
        return h.filter(keep="0e").array

    @nn.compact
    def __call__(self, g: AtomicGraph):
        G = g.graph
        nodes, send, recv = G.nodes, G.senders, G.receivers
        emask = G.edges["mask"]
        types = jnp.asarray(type_table(self.element_types))[nodes["species"]]

        vec = edge_vectors(g)
        r = masked_norm(vec, emask, fill=0.5 * self.threebody_cutoff)
        rbf = self.radial(r)
        dt = rbf.dtype

        if self.interaction not in INTERACTIONS:
            raise ValueError(f"unknown interaction {self.interaction!r}; expected one of {INTERACTIONS}")
        v = nn.Embed(len(self.element_types), self.dim_node, name="node_embedding")(types).astype(dt)
        if self.interaction == "equivariant":
            v = self.equivariant_blocks(v, vec, r, rbf, send, recv, emask)
        else:
            v = self.invariant_blocks(g, v, vec, r, rbf)

        e_atom = GatedMLP(tuple(self.readout_features), activate_last=False, name="readout")(v)[:, 0]
        n_atoms = G.n_node[nodes["graph_index"]].astype(dt)
        energy = EnergyScale(len(self.element_types), name="energy_scale")(e_atom, types, n_atoms)
        return energy * nodes["mask"]
