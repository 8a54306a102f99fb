"""Last-layer prediction rigidity (LLPR; Bigi et al., Mach. Learn.: Sci. Technol. 5, 045018 (2024)):
the uncertainty of any trained single potential from the covariance of its last-layer features.

The energy of a potential is linear in its last layer's parameters theta (for M3GNet the final
Dense of the gated readout, kernel and bias: E_i = scale * gate_i * (h_i . w + b) + ref_i), so
E = Phi . theta + const with the last-layer features Phi = dE/dtheta (P,), summed over atoms. Over
the training frames, C = sum (Phi/n)(Phi/n)^T (n atoms; the loss is per atom) and the posterior
covariance is Sigma = (C + reg I)^-1. Then (calibration scales alpha fitted on validation frames):

* energy variance  alpha_E^2 Phi^T Sigma Phi, exact, from the forward pass alone;
* force / stress variance  alpha^2 g^T Sigma g with g = dPhi/dR (per atom and component) or
  dPhi/d(strain)/V: the gradient of the features. ``directions`` A (P, P) factors
  Sigma = A A^T with its columns ordered by how much force variance they carry on the
  calibration frames (``jaxmat.train._llpr``); the force and stress variances use the first
  ``force_directions`` r columns, whose r feature projections are differentiated in the same
  backward pass as the energy (``jaxmat.potential.outputs_forces_stress``): the cost is one model
  plus r cotangents. With r = P the variances are exact; ``captured_force_variance`` in the
  bundle says what fraction r kept on the calibration frames.
* r = 0, "local": no gradient rows, so the cost is one model's (the feature projections come
  from the forward pass). The force spread of atom i comes from its local energy variance
  sigma_i^2 = phi_i^T Sigma phi_i (phi_i = dE_i/dtheta; the local prediction rigidity of Chong et
  al., J. Chem. Theory Comput. 19, 8020 (2023)): alpha_F sigma_i / sqrt(3) on each component, so
  the atom's std vector has norm alpha_F sigma_i. The stress spread is alpha_S sigma_E / V on each
  component. Both are proxies, not propagated variances: alpha_F and alpha_S are fit on the
  validation forces and stresses like every scale, and the experiment reports how they rank and
  cover (``experiments/uncertainty``).

An ``LLPRModel`` is a ``Model`` (``apply`` is the single model's), so everything that evaluates a
model uses it unchanged; ``JaxmatCalculator`` adds ``energy_std``, ``forces_std``, ``stress_std``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.errors import BundleError, ConfigError
from jaxmat.models._bundle import check_params, save_bundle
from jaxmat.models._model import Model
from jaxmat.models._registry import resolved_hyperparameters
from jaxmat.potential import outputs_forces_stress, to_voigt

SPREADS = ("energy", "forces", "stress")
UNCALIBRATED = {"energy": None, "forces": None, "stress": None, "method": "none"}


def default_layer(model: Model) -> list[str]:
    """Parameter paths ("group/name") of the last linear layer of ``model`` (M3GNet: the readout's
    final Dense, kernel and bias); ConfigError for a family without a known one."""
    if model.family == "M3GNet":
        last = len(model.hyperparameter("readout_features")) - 1
        return [f"readout/layers_{last}_kernel", f"readout/layers_{last}_bias"]
    raise ConfigError(f"LLPR: the last layer of a {model.family} model is not known; name its parameters "
                      "(layer=['group/kernel', 'group/bias'])")


def layer_param(params, path: str):
    """The parameter array at ``path`` ("group/name"); ConfigError naming the groups if there is none."""
    group, name = path.split("/", 1)
    try:
        return params[group][name]
    except (KeyError, TypeError):
        raise ConfigError(f"LLPR layer parameter {path!r} does not exist (groups: {sorted(params)})") from None


def with_layer_param(params, path: str, value):
    """A copy of ``params`` with the array at ``path`` ("group/name") replaced by ``value``."""
    group, name = path.split("/", 1)
    return {**params, group: {**params[group], name: value}}


def layer_size(params, layer) -> int:
    """P: the number of last-layer parameters (= features)."""
    return int(sum(np.size(layer_param(params, p)) for p in layer))


def feature_rows(model: Model, layer, params, graph, directions):
    """(1 + Q, N): per-atom energies, then the per-atom last-layer features projected on the Q
    columns of ``directions`` (P, Q): row 1 + q is (dE_i/dtheta) . directions[:, q] (eV)."""
    parts = [layer_param(params, p) for p in layer]
    shapes = [np.shape(x) for x in parts]
    theta = jnp.concatenate([jnp.ravel(x) for x in parts])

    def energies(flat):
        p, start = params, 0
        for path, shape in zip(layer, shapes):
            size = int(np.prod(shape))
            p = with_layer_param(p, path, flat[start : start + size].reshape(shape))
            start += size
        return model.apply(p, graph)

    e, tangent = jax.linearize(energies, theta)  # the energy is linear in theta: exact features
    return jnp.concatenate([e[None], jax.vmap(tangent)(directions.T.astype(theta.dtype))])


def local_sigma(projections):
    """sigma_i (n,) = sqrt(sum_q rows[q, i]^2) of per-atom feature projections (Q, n) on the columns
    of A (A A^T = Sigma): the local energy std of each atom (eV), before calibration."""
    return np.sqrt(np.sum(np.asarray(projections, np.float64) ** 2, axis=0))


def isotropic(sigma):
    """(n, 3): a per-atom std sigma (n,) split evenly over the three components (sigma / sqrt 3 each,
    so the atom's std vector has norm sigma): the local mode's force spread."""
    return np.repeat(np.asarray(sigma, np.float64)[:, None] / np.sqrt(3.0), 3, axis=1)


def llpr_outputs(model: Model, layer, params, directions, graph, compute_stress: bool = True, n_grad: int = 1,
                 mode: str = "vmap") -> dict:
    """``jaxmat.potential.outputs_forces_stress`` of ``feature_rows``: row 0 is the model's own
    energy/forces/stress, rows 1..n_grad-1 the gradients of the first feature projections."""
    return outputs_forces_stress(lambda p, g: feature_rows(model, layer, p["model"], g, p["directions"]),
                                 {"model": params, "directions": directions}, graph, compute_stress, n_grad, mode)


@dataclasses.dataclass(frozen=True, eq=False)
class LLPRModel(Model):
    """A single potential with its LLPR (see the module docstring).

    Extra attributes:
      layer: parameter paths of the last linear layer ("group/name").
      directions: (P, P) float64, A with A A^T = (C + reg I)^-1, columns by force variance carried
        (r = 0: by C's eigenvalues; the columns' order then means nothing for the forces).
      force_directions: r, the columns of A whose gradients give the force and stress spreads
        (0: "local", from the per-atom energy variances, at one model's cost).
      calibration: scales alpha of the energy, force and stress spreads (None: not calibrated) and
        the method that fit them.
      info: how it was built (regularizer, training frames, captured force variance, ...).
    """

    layer: tuple = ()
    directions: Any = None
    force_directions: int = 1
    calibration: dict = dataclasses.field(default_factory=lambda: dict(UNCALIBRATED))
    info: dict = dataclasses.field(default_factory=dict)

    def single(self) -> Model:
        """The plain model without its LLPR."""
        return Model(self.family, self.hyperparameters, self.params, dict(self.metadata))

    def is_calibrated(self, quantity: str) -> bool:
        return self.calibration.get("method", "none") != "none" and self.calibration.get(quantity) is not None

    def spread_scale(self, quantity: str) -> float:
        s = self.calibration.get(quantity)
        return 1.0 if s is None else float(s)

    def outputs(self, params, graph, compute_stress: bool = True, mode: str = "vmap") -> dict:
        """Row 0: energy/forces/stress; rows 1..r: feature-projection gradients (jit-able); with r = 0
        also ``cell`` (G, 3, 3), for the local stress spread's volume."""
        out = llpr_outputs(self, self.layer, params, jnp.asarray(self.directions), graph, compute_stress,
                           1 + self.force_directions, mode)
        return out if self.force_directions else {**out, "cell": graph.graph.globals["cell"]}

    def results(self, out, n: int, periodic: bool, graph_index=None) -> dict:
        """Calculator results of one structure (graph 0 of ``out``, its first ``n`` atoms):
        energy, forces, stress and the calibrated ``energy_std`` (eV), ``forces_std`` (n, 3),
        ``stress_std`` (6,), as an ensemble's (``JaxmatCalculator``)."""
        r = self.force_directions
        energies = np.asarray(out["energies"][:, :n], np.float64)  # (1 + P, n)
        energy = float(energies[0].sum())
        e_std = float(np.sqrt(np.sum(energies[1:].sum(axis=1) ** 2)))
        if r:
            f_std = np.sqrt(np.sum(np.asarray(out["forces"][1 : 1 + r, :n], np.float64) ** 2, axis=0))
        else:  # local: |phi_i|_Sigma / sqrt(3) on each component
            f_std = isotropic(local_sigma(energies[1:]))
        res = {"energy": energy, "free_energy": energy, "energies": energies[0],
               "forces": np.asarray(out["forces"][0, :n], np.float64),
               "energy_std": self.spread_scale("energy") * e_std, "forces_std": self.spread_scale("forces") * f_std}
        if periodic:
            stress = np.asarray(to_voigt(out["stress"][:, 0]), np.float64)  # (1 + r, 6)
            s_std = (np.sqrt(np.sum(stress[1:] ** 2, axis=0)) if r
                     else np.full(6, e_std / abs(float(np.linalg.det(np.asarray(out["cell"][0], np.float64))))))
            res.update(stress=stress[0], stress_std=self.spread_scale("stress") * s_std)
        return res

    def llpr_config(self) -> dict:
        return {"layer": list(self.layer), "force_directions": int(self.force_directions),
                "calibration": dict(self.calibration), "info": dict(self.info)}

    def save(self, path):
        hyper = resolved_hyperparameters(self.family, self.hyperparameters)
        params = {**self.params, LLPR_GROUP: {"directions": np.asarray(self.directions, np.float64)}}
        return save_bundle(path, self.family, hyper, params, self.metadata, llpr=self.llpr_config())


#: the top-level group of a bundle's weights that holds the LLPR arrays
LLPR_GROUP = "llpr"


def check_llpr_config(cfg, params, where: str) -> dict:
    """ConfigError unless a bundle's ``llpr`` section and arrays fit the model's parameters."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: 'llpr' must be a JSON object, got {cfg!r:.60}")
    layer, r = cfg.get("layer"), cfg.get("force_directions")
    if not isinstance(layer, list) or not layer or not all(isinstance(p, str) and "/" in p for p in layer):
        raise ConfigError(f"{where}: llpr 'layer' must be a non-empty list of 'group/name' parameter paths")
    P = layer_size(params, layer)
    if type(r) is not int or not 0 <= r <= P:
        raise ConfigError(f"{where}: llpr force_directions {r!r}: expected an integer from 0 (local) to {P}")
    cal = {**UNCALIBRATED, **(cfg.get("calibration") or {})}
    for key in SPREADS:
        v = cal[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0):
            raise ConfigError(f"{where}: llpr calibration {key} = {v!r}: expected a finite number > 0, or null")
    return {"layer": layer, "force_directions": r, "calibration": cal, "info": dict(cfg.get("info") or {})}


def load_llpr(path, config, family, hyper, params, expected, metadata) -> LLPRModel:
    """An ``LLPRModel`` from a verified bundle with an ``llpr`` section (``load_model``)."""
    arrays = params.pop(LLPR_GROUP, None)
    if not isinstance(arrays, dict) or "directions" not in arrays:
        raise BundleError(f"{path}: an LLPR bundle must hold the weights group '{LLPR_GROUP}' with 'directions'")
    check_params(params, expected, str(path))
    try:
        cfg = check_llpr_config(config.get("llpr"), params, f"{path / 'config.json'}")
    except ConfigError as err:
        raise BundleError(str(err)) from None
    A = np.asarray(arrays["directions"], np.float64)
    P = layer_size(params, cfg["layer"])
    if A.shape != (P, P):
        raise BundleError(f"{path}: llpr directions have shape {A.shape}, expected ({P}, {P}) for layer {cfg['layer']}")
    return LLPRModel(family, hyper, params, metadata, layer=tuple(cfg["layer"]), directions=A,
                     force_directions=cfg["force_directions"], calibration=cfg["calibration"], info=cfg["info"])
