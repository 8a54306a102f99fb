"""SevenNet (Park et al., J. Chem. Theory Comput. 2024; NequIP architecture) as a pure Flax module:
graph -> per-atom energies, numerically the model of torch ``sevenn`` 0.13 (e3nn conventions in
``jaxmat.nn._irreps``; weights converted by ``jaxmat convert``, see ``jaxmat/convert/_sevenn.py``).

Per interaction block t (node irreps ``irreps[t]`` -> ``irreps[t+1]``, all even parity)::

    sc   = Linear(h)                                    # self-connection, into the gate's input
    x    = Linear(h)                                    # self-interaction 1
    m_i  = sum_j  x_j (x) Y(r_ij) * W_t(|r_ij|)  / denominator_t   # 'uvu' paths, radial MLP weights
    h    = Gate(Linear(m) + sc)                         # self-interaction 2, SiLU gate

with Y the spherical harmonics of the bond i -> j, W_t a bias-free MLP of the Bessel basis times
the cutoff function (so every weight vanishes at the cutoff), and messages summed onto the centre
atom i. The energy of atom i is ``scale * element_scale[Z_i] * Linear(Linear(h_i)) +
element_refs[Z_i]`` (sevenn's per-element shift and scale). No triplets: the model reads the plain
bond graph (``Model.three_body_cutoff`` is None).
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxmat._checks import Rule, at_least, chemical_symbols_rule, one_of, positive
from jaxmat.graph import AtomicGraph, edge_vectors, masked_norm
from jaxmat.models._common import type_table
from jaxmat.nn import (
    IrrepsLinear,
    PathLinear,
    RadialMLP,
    bessel_basis,
    gate,
    parse_irreps,
    path_groups,
    poly_cutoff,
    spherical_harmonics,
    uvu_aggregate,
    uvu_paths,
    xplor_cutoff,
)

CUTOFF_FUNCTIONS = ("XPLOR", "poly_cut")
SEVENNET0_IRREPS = ("128x0e",) + ("128x0e+64x1e+32x2e",) * 4 + ("128x0e",)


def _irreps_ok(v) -> bool:
    try:
        muls = [parse_irreps(s) for s in v]
    except (ValueError, TypeError):
        return False
    return len(muls) >= 2 and all(0 in m for m in muls) and set(muls[-1]) == {0}


class SevenNetEnergyScale(nn.Module):
    """E_i = scale * element_scale[type_i] * e_i + element_refs[type_i]  [eV] (sevenn's
    ``SpeciesWiseRescale``; a common scale is held in ``scale``, ``element_scale`` is then 1)."""

    n_types: int

    @nn.compact
    def __call__(self, e, types):
        refs = self.param("element_refs", nn.initializers.zeros, (self.n_types,))
        scale = self.param("scale", nn.initializers.ones, ())
        per_type = self.param("element_scale", nn.initializers.ones, (self.n_types,))
        dt = e.dtype
        return e * (scale.astype(dt) * per_type.astype(dt)[types]) + refs.astype(dt)[types]


class SevenNet(nn.Module):
    """Args (static config, stored in a bundle's ``config.json``):
      element_types: chemical symbols; type index = position in this list.
      irreps: node irreps before the first and after each interaction block (len = blocks + 1),
        even parity, each l once, e.g. SevenNet-0's ``SEVENNET0_IRREPS``; the last is scalars only.
      lmax_sh: largest l of the bond spherical harmonics.
      normalize_sh: harmonics of the unit bond vector (True) or of the raw vector (old checkpoints).
      cutoff: bond cutoff [A]. cutoff_function: "XPLOR" (switching on at ``cutoff_on`` A) or
        "poly_cut" (polynomial envelope of order ``poly_p``).
      num_basis: Bessel functions. radial_hidden: hidden widths of each block's radial MLP.
      conv_denominator: per block, the messages are divided by this (sqrt of sevenn's average
        number of neighbours).

    ``__call__(graph)`` returns per-atom energies (N,) in eV (zero on padding nodes).
    """

    output_kind: ClassVar[str] = "atoms"
    constant_params: ClassVar[tuple] = ()
    RULES: ClassVar[dict] = {
        "element_types": chemical_symbols_rule(),
        "irreps": Rule(_irreps_ok, "node irreps strings (even parity, scalars in each, the last scalars only), "
                                   "at least two"),
        "lmax_sh": at_least(0), "cutoff": positive(), "cutoff_function": one_of(*CUTOFF_FUNCTIONS),
        "cutoff_on": positive(), "poly_p": at_least(1), "num_basis": at_least(1),
        "radial_hidden": Rule(lambda v: all(w >= 1 for w in v), "positive widths"),
        "conv_denominator": Rule(lambda v: len(v) > 0 and min(v) > 0, "positive numbers, one per block")}

    element_types: Sequence[str]
    irreps: Sequence[str] = SEVENNET0_IRREPS
    lmax_sh: int = 2
    normalize_sh: bool = True
    cutoff: float = 5.0
    cutoff_function: str = "XPLOR"
    cutoff_on: float = 4.5
    poly_p: int = 6
    num_basis: int = 8
    radial_hidden: Sequence[int] = (64, 64)
    conv_denominator: Sequence[float] = (35.98957443237305,) * 5

    @nn.compact
    def __call__(self, g: AtomicGraph):
        G = g.graph
        nodes = G.nodes
        n_node = nodes["species"].shape[0]
        n_blocks = len(self.irreps) - 1
        if len(self.conv_denominator) != n_blocks:
            raise ValueError(f"conv_denominator has {len(self.conv_denominator)} values for {n_blocks} blocks")
        types = jnp.asarray(type_table(self.element_types))[nodes["species"]]
        emb, sh = EdgeEmbedding(self.cutoff, self.cutoff_function, self.cutoff_on, self.poly_p, self.num_basis,
                                self.lmax_sh, self.normalize_sh, name="radial_basis")(g)
        n_types = len(self.element_types)
        table = NodeEmbedding(n_types, parse_irreps(self.irreps[0])[0], name="node_embedding")()
        h = {0: table.astype(emb.dtype)[types][:, None, :]}
        for t in range(n_blocks):
            h = InteractionBlock(self.irreps[t], self.irreps[t + 1], self.lmax_sh, tuple(self.radial_hidden),
                                 float(self.conv_denominator[t]), name=f"interaction_{t}")(
                h, emb, sh, G.senders, G.receivers, n_node)
        hidden = max(h[0].shape[-1] // 2, 1)
        e = IrrepsLinear(((0, hidden),), name="readout_hidden")({0: h[0]})
        e = IrrepsLinear(((0, 1),), name="readout")(e)[0][:, 0, 0]
        energy = SevenNetEnergyScale(n_types, name="energy_scale")(e, types)
        return energy * nodes["mask"]


class NodeEmbedding(nn.Module):
    """sevenn's one-hot -> Linear: a table (n_types, mul) of N(0, 1) weights / sqrt(n_types)."""

    n_types: int
    mul: int

    @nn.compact
    def __call__(self):
        table = self.param("embedding", nn.initializers.normal(1.0), (self.n_types, self.mul))
        return table * (self.n_types ** -0.5)


class EdgeEmbedding(nn.Module):
    """Radial embedding (E, num_basis), Bessel basis (trainable ``coeffs``) times the cutoff
    function, zero on padding edges; and the harmonics {l: (E, 2l+1)} of the reversed bond
    (receiver -> sender), so that messages can be summed onto the (sorted) receivers."""

    cutoff: float
    cutoff_function: str
    cutoff_on: float
    poly_p: int
    num_basis: int
    lmax_sh: int
    normalize_sh: bool

    @nn.compact
    def __call__(self, g: AtomicGraph):
        emask = g.graph.edges["mask"]
        vec = edge_vectors(g)
        r = masked_norm(vec, emask, fill=0.5 * self.cutoff)
        dt = r.dtype
        coeffs = self.param("coeffs", lambda k, s: jnp.pi / self.cutoff * jnp.arange(1, s[0] + 1.0), (self.num_basis,))
        if self.cutoff_function == "XPLOR":
            env = xplor_cutoff(r, self.cutoff_on, self.cutoff)
        elif self.cutoff_function == "poly_cut":
            env = poly_cutoff(r, self.cutoff, self.poly_p)
        else:
            raise ValueError(f"unknown cutoff_function {self.cutoff_function!r}; expected one of {CUTOFF_FUNCTIONS}")
        emb = bessel_basis(r, coeffs.astype(dt), self.cutoff) * (env * emask)[:, None]
        safe = jnp.where(emask[:, None], -vec, jnp.asarray([0.0, 0.0, 1.0], dt))
        return emb, spherical_harmonics(safe, self.lmax_sh, self.normalize_sh)


class InteractionBlock(nn.Module):
    """One NequIP block: node features {l: (N, 2l+1, mul)} of ``irreps_in`` -> ``irreps_out``."""

    irreps_in: str
    irreps_out: str
    lmax_sh: int
    radial_hidden: tuple
    denominator: float

    @nn.compact
    def __call__(self, h: dict, emb, sh, senders, receivers, n_node: int) -> dict:
        muls_in, muls_out = parse_irreps(self.irreps_in), parse_irreps(self.irreps_out)
        n_gates = sum(m for l, m in muls_out.items() if l > 0)
        gate_in = tuple((l, m + (n_gates if l == 0 else 0)) for l, m in muls_out.items())
        sc = IrrepsLinear(gate_in, name="self_connection")(h)
        x = IrrepsLinear(tuple(muls_in.items()), name="linear_1")(h)
        paths = uvu_paths(tuple(muls_in), self.lmax_sh, tuple(range(max(muls_out) + 1)))
        split = tuple(len(grp) * muls_in[grp[0].l_in] for grp in path_groups(paths))
        w = RadialMLP(self.radial_hidden + (sum(split),), split=split, name="radial")(emb)
        agg = uvu_aggregate(x, sh, w, paths, senders, receivers, n_node)
        inv = 1.0 / self.denominator
        y = PathLinear(gate_in, name="linear_2")({p: a * inv for p, a in agg.items()}, paths)
        y = {l: y.get(l, 0) + sc.get(l, 0) for l in set(y) | set(sc)}
        return gate(y, muls_out)
