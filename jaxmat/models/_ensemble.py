"""Ensembles: K members of one architecture whose parameters carry a leading member axis.

* **deep**: every parameter group is stacked, shape (K, ...): K full models.
* **shallow**: only the groups in ``stacked`` (default ``("readout",)``) carry the member axis; the
  body is shared, so its forward pass runs once for all K heads.

One code path serves both: ``stacked`` says which top-level parameter groups carry the member axis
(the others are shared), and ``jax.vmap`` / ``jax.lax.map`` map over exactly those.
``Ensemble.apply`` is the members' mean per-atom energy, so everything that evaluates a ``Model``
(``jaxmat.potential``, ``Model.predict``, ``jaxmat evaluate``, ``jaxmat md``) evaluates the
ensemble mean unchanged; the spread comes from ``member_results``.

Calibration: ``calibration = {"energy": s_E, "forces": s_F, "stress": s_S, "method": ...}``
multiplies the members' sample standard deviation (ddof=1) wherever a spread is reported
(``jaxmat.uncertainty.member_stats``). A quantity that was not calibrated (method "none", or no
labels of it where the others were fit) has scale ``None`` (null in the bundle): its reported
spread is the raw members' std (``spread_scale`` gives 1), and ``is_calibrated`` says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmat.errors import ConfigError
from jaxmat.models._bundle import save_bundle
from jaxmat.models._model import Model
from jaxmat.models._registry import resolved_hyperparameters
from jaxmat.models._shallow import head_results
from jaxmat.potential import energy_forces_stress

KINDS = ("deep", "shallow")
#: evaluation modes: all members in one vmapped call, or one member after another (lax.map)
MODES = ("auto", "vmap", "sequential")
#: ``mode="auto"``: vmap on accelerators (the member axis runs in parallel), one member after another
#: on the CPU, where vmap measured 2-4x slower (K = 8 on Si64: 8.7x one member vmapped, 3.4x with
#: lax.map; experiments/uncertainty/bench_ensemble.py)
#: the spread quantities that carry a calibration scale
SPREADS = ("energy", "forces", "stress")
UNCALIBRATED = {"energy": None, "forces": None, "stress": None, "method": "none"}


@dataclasses.dataclass(frozen=True, eq=False)
class Ensemble(Model):
    """A ``Model`` whose ``params`` hold K members (see the module docstring).

    Extra attributes:
      kind: "deep" or "shallow".
      stacked: top-level parameter groups with the member axis (all of them for "deep").
      calibration: scale factors of the spreads (energy, forces, stress) and the method that fit them.
    """

    kind: str = "deep"
    stacked: tuple = ()
    calibration: dict = dataclasses.field(default_factory=lambda: dict(UNCALIBRATED))

    # ---------------------------------------------------------------- structure
    @property
    def size(self) -> int:
        """Number of members K."""
        return int(np.shape(jax.tree_util.tree_leaves(self.params[self.stacked[0]])[0])[0])

    def member_params(self, k: int, params=None):
        """Parameters of member ``k`` (a plain single-model tree)."""
        params = self.params if params is None else params
        return {g: (jax.tree_util.tree_map(lambda x: x[k], v) if g in self.stacked else v) for g, v in params.items()}

    def member(self, k: int) -> Model:
        """Member ``k`` as a single ``Model``."""
        return Model(self.family, self.hyperparameters, self.member_params(k), dict(self.metadata))

    def with_params(self, params) -> "Ensemble":
        return dataclasses.replace(self, params=params, _cache={})

    def with_calibration(self, calibration: dict) -> "Ensemble":
        return dataclasses.replace(self, calibration={**UNCALIBRATED, **calibration}, _cache={})

    def is_calibrated(self, quantity: str) -> bool:
        """Whether the spread of ``quantity`` ("energy", "forces", "stress") was fitted to labels."""
        return self.calibration.get("method", "none") != "none" and self.calibration.get(quantity) is not None

    def spread_scale(self, quantity: str) -> float:
        """The factor on the members' std of ``quantity``: its fitted scale, 1 where not calibrated."""
        s = self.calibration.get(quantity)
        return 1.0 if s is None else float(s)

    # ---------------------------------------------------------------- evaluation
    def map_members(self, fn: Callable, params, mode: str = "vmap"):
        """``fn(member_params)`` for every member, stacked on a leading axis (K, ...).

        "vmap": one batched call (shared groups stay unbatched, so a shallow body runs once);
        "sequential": ``lax.map`` over the stacked groups, one member at a time (memory of one).
        """
        shared = {g: v for g, v in params.items() if g not in self.stacked}
        own = {g: v for g, v in params.items() if g in self.stacked}
        if mode == "sequential":
            return jax.lax.map(lambda o: fn({**shared, **o}), own)
        return jax.vmap(lambda o: fn({**shared, **o}))(own)

    def members_apply(self, params, graph, mode: str = "vmap"):
        """Per-member per-atom energies (K, N) [eV]."""
        return self.map_members(lambda p: Model.apply(self, p, graph), params, mode)

    def apply(self, params, graph):
        """The members' mean per-atom energy (N,) [eV]: an ensemble is used wherever a model is."""
        return jnp.mean(self.members_apply(params, graph, self.choose_mode("auto")), axis=0)

    def choose_mode(self, mode: str, n_edge: int | None = None) -> str:
        """The documented rule for ``mode="auto"``: "sequential" on the CPU, "vmap" on accelerators
        (see the note on ``MODES``); ``n_edge`` is accepted for callers that size by the graph."""
        if mode not in MODES:
            raise ConfigError(f"ensemble mode {mode!r}: expected one of {MODES}")
        if mode != "auto":
            return mode
        return "sequential" if jax.default_backend() == "cpu" else "vmap"

    def shard_members(self, params=None, devices: int | None = None):
        """``params`` with the member axis of every stacked group split over the first ``devices``
        devices (default all; ``size`` must be a multiple) and the shared groups replicated: evaluated
        with mode "vmap", each device computes its own members (``jax.sharding``, no other change)."""
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        params = self.params if params is None else params
        n = jax.device_count() if devices is None else int(devices)
        if n < 1 or n > jax.device_count() or self.size % n:
            raise ConfigError(f"ensemble of {self.size} members on {n} devices: expected a divisor of the size "
                              f"between 1 and the {jax.device_count()} available devices")
        mesh = Mesh(np.array(jax.devices()[:n]), ("members",))
        split, rep = NamedSharding(mesh, PartitionSpec("members")), NamedSharding(mesh, PartitionSpec())
        return {g: jax.tree_util.tree_map(lambda x: jax.device_put(x, split if g in self.stacked else rep), v)
                for g, v in params.items()}

    def member_results(self, params, graph, compute_stress: bool = True, mode: str = "vmap") -> dict:
        """``jaxmat.potential.energy_forces_stress`` of every member: each entry with a leading
        member axis (K, ...). Forces and stress are derived once per member, in the one place.
        A shallow ensemble runs its shared body once forward and pulls the K heads' cotangents back
        in one batched pass (``jaxmat.models._shallow``; same numbers)."""
        if self.kind == "shallow":
            return head_results(self, params, graph, compute_stress, mode)
        return self.map_members(lambda p: energy_forces_stress(
            lambda pp, g: Model.apply(self, pp, g), p, graph, compute_stress), params, mode)

    def save(self, path):
        hyper = resolved_hyperparameters(self.family, self.hyperparameters)
        return save_bundle(path, self.family, hyper, self.params, self.metadata, ensemble=self.ensemble_config())

    def ensemble_config(self) -> dict:
        return {"kind": self.kind, "size": self.size, "stacked": list(self.stacked),
                "calibration": dict(self.calibration)}


def stack_members(models, kind: str = "deep", stacked=None, metadata=None, allow_identical: bool = False) -> Ensemble:
    """An ensemble from K >= 2 single models of one architecture (same family and hyperparameters).

    ``kind="deep"`` stacks every parameter group; ``kind="shallow"`` stacks the groups in
    ``stacked`` (default ``("readout",)``) and takes the shared ones from the first model, which
    must equal them in every other model. Two members with bit-identical stacked parameters are
    refused (their spread is 0 everywhere), unless ``allow_identical`` (e.g. to check that an
    ensemble of copies reproduces the single model).
    """
    models = list(models)
    if len(models) < 2:
        raise ConfigError(f"an ensemble needs at least 2 members, got {len(models)}")
    if kind not in KINDS:
        raise ConfigError(f"ensemble kind {kind!r}: expected one of {KINDS}")
    first = models[0]
    for k, m in enumerate(models):
        if isinstance(m, Ensemble) or not isinstance(m, Model):
            raise ConfigError(f"ensemble member {k} must be a single jaxmat.Model, got {type(m).__name__}")
        same = m.family == first.family and resolved_hyperparameters(m.family, m.hyperparameters) == \
            resolved_hyperparameters(first.family, first.hyperparameters)
        if not same:
            diff = sorted(k2 for k2, v in resolved_hyperparameters(m.family, m.hyperparameters).items()
                          if resolved_hyperparameters(first.family, first.hyperparameters).get(k2) != v)
            raise ConfigError(f"ensemble member {k} ({m.name}, {m.family}) is not the architecture of member 0 "
                              f"({first.name}, {first.family}): they differ in {diff or ['family']}")
    groups = tuple(first.params) if kind == "deep" else tuple(stacked or ("readout",))
    missing = [g for g in groups if g not in first.params]
    if missing:
        raise ConfigError(f"ensemble: parameter group(s) {missing} do not exist; groups: {sorted(first.params)}")
    params = {}
    for g, v in first.params.items():
        if g in groups:
            params[g] = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                                               *[m.params[g] for m in models])
        else:
            for k, m in enumerate(models[1:], 1):
                if not all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(v),
                                                                 jax.tree_util.tree_leaves(m.params[g]))):
                    raise ConfigError(f"shallow ensemble: member {k} differs from member 0 in the shared group {g!r}")
            params[g] = v
    if not allow_identical:  # (after the shared groups were found equal)
        _refuse_identical(models, groups)
    meta = dict(metadata if metadata is not None else first.metadata)
    return Ensemble(first.family, dict(first.hyperparameters), params, meta, kind=kind, stacked=groups)


def _refuse_identical(models, groups) -> None:
    """ConfigError naming the first two members whose parameters in ``groups`` are bit-identical."""
    seen = {}
    for k, m in enumerate(models):
        h = hashlib.sha256()
        for g in groups:
            for leaf in jax.tree_util.tree_leaves(m.params[g]):
                a = np.ascontiguousarray(leaf)
                h.update(f"{a.dtype}{a.shape}".encode())
                h.update(a.tobytes())
        j = seen.setdefault(h.hexdigest(), k)
        if j != k:
            raise ConfigError(f"ensemble members {j} ({models[j].name}) and {k} ({m.name}) have bit-identical parameters"
                              f"{'' if len(groups) == len(m.params) else ' in the stacked groups ' + str(list(groups))}: "
                              "copies of one model agree everywhere, so the ensemble's spread would be 0 (no uncertainty "
                              "at all); give each member once, as separately trained models")


def warn_if_uncalibrated(model, quantity: str, what: str) -> None:
    """A UserWarning when ``model`` is an ensemble whose ``quantity`` spread is not calibrated and
    ``what`` (e.g. "md.max_force_std = 0.5 eV/A") compares that raw members' std with a threshold."""
    if isinstance(model, Ensemble) and not model.is_calibrated(quantity):
        warnings.warn(f"{what} watches the {quantity} spread of {model.name}, which is NOT calibrated (its calibration: "
                      f"method {model.calibration.get('method')!r}, no {quantity} scale): the threshold is compared with "
                      "the raw members' std (ddof=1), which may be far too small or too large; calibrate the ensemble on "
                      f"held-out frames labelled with {quantity} (jaxmat ensemble OUT MEMBER... --calibrate-on FILE)",
                      UserWarning, stacklevel=3)


def check_ensemble_config(ens, where: str) -> dict:
    """ConfigError unless a bundle's ``ensemble`` section is well formed; returns it completed."""
    if not isinstance(ens, dict):
        raise ConfigError(f"{where}: 'ensemble' must be a JSON object, got {ens!r:.60}")
    kind, size, stacked = ens.get("kind"), ens.get("size"), ens.get("stacked")
    if kind not in KINDS:
        raise ConfigError(f"{where}: ensemble kind {kind!r}: expected one of {KINDS}")
    if type(size) is not int or size < 2:
        raise ConfigError(f"{where}: ensemble size {size!r}: expected an integer >= 2")
    if not isinstance(stacked, list) or not stacked or not all(isinstance(s, str) for s in stacked):
        raise ConfigError(f"{where}: ensemble 'stacked' must be a non-empty list of parameter groups")
    cal = {**UNCALIBRATED, **(ens.get("calibration") or {})}
    if not isinstance(cal["method"], str):
        raise ConfigError(f"{where}: ensemble calibration method {cal['method']!r}: expected a string")
    for key in SPREADS:
        v = cal[key]
        if v is None:  # not calibrated
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
            raise ConfigError(f"{where}: ensemble calibration {key} = {v!r}: expected a finite number > 0, "
                              "or null (not calibrated)")
    return {"kind": kind, "size": size, "stacked": stacked, "calibration": cal}
