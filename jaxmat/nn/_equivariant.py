"""NequIP-style equivariant interaction block (Batzner et al. 2022) with e3nn-jax.

One block: self-interaction (linear), messages ``h_i (x) Y(r_ij)`` (tensor product with the
spherical harmonics of the bond direction) weighted per path by a radial MLP times a smooth
envelope, summed onto the receiving atom, linear mixing, gate nonlinearity, residual.
"""

from __future__ import annotations

from typing import Sequence

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmat.nn._mlp import MLP


class EquivariantInteraction(nn.Module):
    """Args:
      irreps_out: node feature irreps after the block, e.g. "64x0e + 16x1o + 8x2e".
      lmax: largest l of the edge spherical harmonics.
      radial_hidden: hidden widths of the radial MLP.
      avg_neighbors: messages are divided by sqrt(avg_neighbors).

    ``__call__(h, vectors, radial, envelope, senders, receivers, edge_mask)``:
      h: IrrepsArray (N, irreps_in); vectors (E, 3) [A] bond i->j; radial (E, K) basis of |r_ij|;
      envelope (E,) smooth cutoff (0 at and beyond the cutoff, 0 on padding edges).
    Returns the IrrepsArray (N, irreps_out regrouped: sorted by l and parity). Equivariant under O(3) (rotations and inversion).
    """

    irreps_out: str
    lmax: int = 2
    radial_hidden: Sequence[int] = (32,)
    avg_neighbors: float = 20.0

    @nn.compact
    def __call__(self, h, vectors, radial, envelope, senders, receivers, edge_mask):
        irreps_out = e3nn.Irreps(self.irreps_out).regroup()  # sorted and merged, as the gate returns it
        n_node = h.shape[0]
        safe = jnp.where(edge_mask[:, None], vectors, jnp.array([0.0, 0.0, 1.0], vectors.dtype))
        sh = e3nn.spherical_harmonics(range(1, self.lmax + 1), e3nn.IrrepsArray("1o", safe), normalize=True,
                                      normalization="component")
        x = e3nn.flax.Linear(h.irreps, name="pre")(h)
        msg = x[senders]
        wanted = [ir for _, ir in irreps_out]
        msg = e3nn.concatenate([msg, e3nn.tensor_product(msg, sh, filter_ir_out=wanted)]).regroup()
        mix = MLP(tuple(self.radial_hidden) + (msg.irreps.num_irreps,), "silu", activate_last=False,
                  name="radial")(radial)
        msg = msg * (mix * (envelope * edge_mask)[:, None])
        agg = e3nn.scatter_sum(msg, dst=receivers, output_size=n_node) / jnp.sqrt(self.avg_neighbors)
        n_gates = irreps_out.filter(drop=["0e", "0o"]).num_irreps
        pre_gate = (irreps_out + e3nn.Irreps(f"{n_gates}x0e")).simplify() if n_gates else irreps_out
        out = e3nn.gate(e3nn.flax.Linear(pre_gate, name="post")(agg), even_act=jax.nn.silu).regroup()
        return out + e3nn.flax.Linear(irreps_out, force_irreps_out=True, name="skip")(h)
