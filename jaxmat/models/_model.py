"""``Model``: a Flax module, its parameters and its config; ``load_model`` by name or path."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ase.data import chemical_symbols

from jaxmat._checks import check_fields
from jaxmat._pretrained import DEFAULT_MODEL, PRETRAINED_DIR, list_pretrained
from jaxmat.errors import BundleError, ConfigError, UnknownElementError
from jaxmat.models._bundle import check_params, read_bundle, save_bundle
from jaxmat.models._m3gnet import M3GNet
from jaxmat.models._megnet import MEGNet
from jaxmat.models._sevennet import SevenNet

#: Model families a bundle may name in its ``"model"`` field.
FAMILIES: dict[str, type[nn.Module]] = {"M3GNet": M3GNet, "MEGNet": MEGNet, "SevenNet": SevenNet}


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A model: ``apply(params, graph)`` -> per-atom energies (N,) [eV] for potentials
    (``output_kind == "atoms"``, M3GNet) or one value per graph (G,) for structure -> property
    models (``output_kind == "graph"``, MEGNet).

    Attributes:
      family: model family name (key of ``FAMILIES``).
      hyperparameters: keyword arguments of the Flax module (JSON-serialisable).
      params: parameter pytree (float32 numpy/jax arrays).
      metadata: origin, licence, training information.
    """

    family: str
    hyperparameters: dict
    params: Any
    metadata: dict = dataclasses.field(default_factory=dict)
    _cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)  # jitted predict fns

    @property
    def module(self) -> nn.Module:
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in self.hyperparameters.items()}
        return FAMILIES[self.family](**kwargs)

    def apply(self, params, graph):
        return self.module.apply({"params": params}, graph)

    @property
    def output_kind(self) -> str:
        return FAMILIES[self.family].output_kind

    @property
    def constant_params(self) -> tuple:
        """Parameter paths ('group/name') that training must never update (converted buffers)."""
        return tuple(getattr(FAMILIES[self.family], "constant_params", ()))

    def with_params(self, params) -> "Model":
        return Model(self.family, self.hyperparameters, params, self.metadata)

    def predict(self, structures, batch_size: int = 32, dtype: str = "float32", checks=None):
        """(len(structures),) numpy predictions; see ``jaxmat.models._predict.predict``. ``checks``:
        a ``jaxmat.graph.StructureChecks`` (default thresholds if None)."""
        from jaxmat.graph import DEFAULT_CHECKS
        from jaxmat.models._predict import predict

        return predict(self, structures, batch_size, dtype, cache=self._cache, checks=checks or DEFAULT_CHECKS)

    def hyperparameter(self, name: str):
        """A hyperparameter as the module uses it: the bundle's value or the family's default
        (None for a name the family does not have)."""
        return resolved_hyperparameters(self.family, self.hyperparameters).get(name)

    @property
    def cutoff(self) -> float:
        return float(self.hyperparameter("cutoff"))

    @property
    def three_body_cutoff(self) -> float | None:
        """Triplet cutoff [A]; None when the architecture uses no triplets."""
        tb = self.hyperparameter("threebody_cutoff")
        if tb is None or self.hyperparameter("interaction") != "three_body":
            return None
        return float(tb)

    @property
    def element_types(self) -> tuple[str, ...]:
        return tuple(self.hyperparameters["element_types"])

    @property
    def name(self) -> str:
        return self.metadata.get("name", self.family)

    def check_species(self, numbers) -> None:
        """Raise UnknownElementError naming any atomic number the model does not know."""
        known = set(self.element_types)
        unknown = sorted({chemical_symbols[int(z)] if 0 < int(z) < len(chemical_symbols) else str(int(z))
                          for z in np.unique(numbers)} - known)
        if unknown:
            raise UnknownElementError(
                f"element(s) {', '.join(unknown)} not supported by model {self.name} "
                f"(it knows {len(known)} elements: {' '.join(self.element_types)})"
            )

    def save(self, path) -> Path:
        """Write a bundle; its config lists every hyperparameter, defaults included, so the config
        hash certifies exactly what the module computes."""
        hyper = resolved_hyperparameters(self.family, self.hyperparameters)
        return save_bundle(path, self.family, hyper, self.params, self.metadata)

    def init_params(self, graph, seed: int = 0):
        """Fresh random parameters for this architecture (float32)."""
        return self.module.init(jax.random.PRNGKey(seed), graph)["params"]


def default_hyperparameters(family: str) -> dict:
    """The family's constructor defaults as a JSON-able dict (explicit in every bundle)."""
    out = {}
    for f in dataclasses.fields(FAMILIES[family]):
        if f.name in ("parent", "name") or f.default is dataclasses.MISSING:
            continue
        out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
    return out


def resolved_hyperparameters(family: str, hyperparameters: dict) -> dict:
    """``hyperparameters`` completed with the family's defaults: what the module computes with."""
    return {**default_hyperparameters(family), **hyperparameters}


def _tiny_graph(model: "Model"):
    """A padded two-atom graph of the model's first element (for initialising parameters; the
    structure checks are off: a 1.5 A dimer of a large atom is fine for shapes)."""
    from jaxmat.graph import StructureChecks, atoms_to_graph, bucket_sizes, graph_sizes, pad_graph
    import ase

    sym = model.element_types[0]
    g = atoms_to_graph(ase.Atoms(sym + "2", positions=[[0, 0, 0], [1.5, 0, 0]]),
                       model.cutoff, model.three_body_cutoff, StructureChecks(min_distance_factor=0))
    return jax.tree_util.tree_map(jnp.asarray, pad_graph(g, bucket_sizes(graph_sizes(g))))


def expected_param_shapes(family: str, hyperparameters: dict):
    """Parameter shapes of a family/hyperparameters pair, from an abstract init on a tiny graph."""
    model = Model(family, hyperparameters, None)
    g = _tiny_graph(model)
    return jax.eval_shape(lambda: model.module.init(jax.random.PRNGKey(0), g))["params"]


def fresh_params(family: str, hyperparameters: dict, seed: int = 0):
    """Random initial parameters of a family/hyperparameters pair (float32)."""
    model = Model(family, hyperparameters, None)
    return model.init_params(_tiny_graph(model), seed)


def load_model(name_or_path=DEFAULT_MODEL) -> Model:
    """Load a model bundle by pretrained name (see ``list_pretrained()``) or folder path.

    Works offline and without torch. Raises BundleError for a missing, corrupt or incompatible
    bundle.
    """
    if isinstance(name_or_path, Model):
        return name_or_path
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"load_model expects a pretrained model name, a bundle folder path or a jaxmat.Model, "
                        f"got {type(name_or_path).__name__} {name_or_path!r:.60}")
    if not str(name_or_path).strip():
        raise BundleError(f"load_model got an empty name; pretrained models: {', '.join(list_pretrained())}")
    path = Path(name_or_path)
    if not path.is_dir():
        candidate = PRETRAINED_DIR / str(name_or_path)
        if not candidate.is_dir():
            raise BundleError(
                f"no model bundle at {str(name_or_path)!r}; pretrained models: {', '.join(list_pretrained())}"
            )
        path = candidate
    config, params = read_bundle(path)
    family = config.get("model")
    if family not in FAMILIES:
        raise BundleError(f"{path}: unknown model family {family!r}; known: {sorted(FAMILIES)}")
    hyper = config["hyperparameters"]
    try:
        check_hyperparameters(family, hyper, f"{path / 'config.json'}: hyperparameters", required=("element_types",))
    except ConfigError as err:
        raise BundleError(str(err)) from None
    try:
        expected = expected_param_shapes(family, hyper)
    except (TypeError, ValueError, KeyError, IndexError) as err:  # the module cannot be built from them
        raise BundleError(f"{path}: hyperparameters do not fit {family}: {type(err).__name__}: {err}") from None
    metadata = dict(config.get("metadata", {}))
    metadata.setdefault("name", path.name)
    if "ensemble" in config or config.get("format_version") == 3:
        return _load_ensemble(path, config, family, hyper, params, expected, metadata)
    if "llpr" in config or config.get("format_version") == 4:
        from jaxmat.models._llpr import load_llpr

        return load_llpr(path, config, family, hyper, params, expected, metadata)
    check_params(params, expected, str(path))
    return Model(family, hyper, params, metadata)


def _load_ensemble(path, config, family, hyper, params, expected, metadata):
    """An ``Ensemble`` from a verified format-3 bundle: the stacked groups carry (K, ...) shapes."""
    from jaxmat.models._ensemble import Ensemble, check_ensemble_config

    try:
        ens = check_ensemble_config(config.get("ensemble"), f"{path / 'config.json'}")
    except ConfigError as err:
        raise BundleError(str(err)) from None
    unknown = sorted(set(ens["stacked"]) - set(expected))
    if unknown:
        raise BundleError(f"{path}: ensemble stacks parameter group(s) {unknown} the model does not have")
    K = ens["size"]
    stacked_shapes = {g: (jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct((K, *s.shape), s.dtype), v)
                          if g in ens["stacked"] else v) for g, v in expected.items()}
    check_params(params, stacked_shapes, str(path))
    return Ensemble(family, hyper, params, metadata, kind=ens["kind"], stacked=tuple(ens["stacked"]),
                    calibration=ens["calibration"])


def check_hyperparameters(family: str, hyper: dict, where: str, required: tuple = ()) -> None:
    """ConfigError unless ``hyper`` fits ``family``: each value against the family's annotations and
    ``RULES`` (``jaxmat._checks``), then the rules across values. Used by ``load_model`` (bundles)
    and by training configs (from-scratch hyperparameters)."""
    cls = FAMILIES[family]
    check_fields(cls, hyper, where, required)
    full = resolved_hyperparameters(family, hyper)
    tb, rc = full.get("threebody_cutoff"), full.get("cutoff")
    if tb is not None and rc is not None and tb > rc:
        raise ConfigError(f"{where}: threebody_cutoff {tb} A exceeds cutoff {rc} A (triplets are pairs of bonds of "
                          "the graph, so their cutoff function would be cut off abruptly)")
