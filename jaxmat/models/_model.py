"""``Model``: a Flax module of a registered family, its parameters and its config.

Loading a bundle by name or path is ``jaxmat.models.load_model`` (``_load.py``), which also builds
the subclasses (``Ensemble``, ``LLPRModel``); nothing here imports them.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import ase
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from ase.data import chemical_symbols

from jaxmat.errors import UnknownElementError
from jaxmat.graph import DEFAULT_CHECKS, StructureChecks, atoms_to_graph, bucket_sizes, graph_sizes, pad_graph
from jaxmat.models._bundle import save_bundle
from jaxmat.models._predict import predict_structures
from jaxmat.models._registry import FAMILIES, resolved_hyperparameters


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

    def predict(self, structures, graphs_per_batch: int = 32, dtype: str = "float32", checks=None, *,
                batch_size: int | None = None):
        """(len(structures),) float64 numpy predictions, ``graphs_per_batch`` structures per jitted
        call; see ``jaxmat.models._predict.predict_structures``. ``checks``: a
        ``jaxmat.graph.StructureChecks`` (default thresholds if None). ``batch_size``: the old name
        of ``graphs_per_batch`` (deprecated)."""
        if batch_size is not None:
            warnings.warn("Model.predict(batch_size=...) is deprecated: the argument is now graphs_per_batch "
                          "(the name training configs and jaxmat evaluate use)", DeprecationWarning, stacklevel=2)
            graphs_per_batch = batch_size
        return predict_structures(self, structures, graphs_per_batch, dtype, cache=self._cache,
                                  checks=checks or DEFAULT_CHECKS)

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
        """Fresh random parameters for this architecture (float32) on the padded ``graph``.

        Jitted and kept with the model: one compilation per graph shape, which the compilation cache
        keeps across processes, where an eager init compiles each of its hundreds of operations anew
        (TINY M3GNet: about twice as fast; a second seed or call on the same shapes: no compilation).
        XLA may round a fused operation differently from the op-by-op one: values can differ from an
        eager ``module.init`` in the last bit (the equivariant block's, by 1 ulp)."""
        init = self._cache.get("init")
        if init is None:
            module = self.module
            init = self._cache["init"] = jax.jit(lambda key, g: module.init(key, g)["params"])
        return init(jax.random.PRNGKey(seed), graph)


def _tiny_graph(model: "Model"):
    """A padded two-atom graph of the model's first element (for initialising parameters; the
    structure checks are off: a 1.5 A dimer of a large atom is fine for shapes)."""
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
