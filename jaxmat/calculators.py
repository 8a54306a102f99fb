"""ASE calculator for jaxmat models: energy, free_energy, per-atom energies, forces, stress.

Stress is returned in eV/A^3 with ASE's sign and Voigt order (see ``jaxmat.potential``); it is
only defined for cells periodic in all three directions. For an ensemble (``jaxmat.models.Ensemble``)
these are the members' means, and the results also hold the calibrated spreads ``energy_std`` (eV),
``forces_std`` (N, 3) and ``stress_std`` (6,) (the raw members' std for a quantity the bundle has
not calibrated: ``model.is_calibrated(q)``), and the members' own ``energies_members`` (K,),
``forces_members`` (K, N, 3) and ``stress_members`` (K, 6). An LLPR bundle (``jaxmat llpr``,
``jaxmat.models._llpr``) gives the single model's values and the same three spreads (no members).
"""

from __future__ import annotations

import jax
import numpy as np
import vesin
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from jaxmat._checks import at_least, check_value, non_negative, one_of
from jaxmat.errors import ConfigError
from jaxmat.graph import (
    CUTOFF_TOLERANCE,
    DEFAULT_CHECKS,
    PadSizes,
    StructureChecks,
    atoms_to_graph,
    cast_floats,
    graph_sizes,
    grow_sizes,
    pad_graph,
    sizing_triplets,
)
from jaxmat.models import DEFAULT_MODEL, Ensemble, LLPRModel, load_model
from jaxmat.potential import energy_forces_stress, to_voigt
from jaxmat.uncertainty import member_stats


class JaxmatCalculator(Calculator):
    """ASE calculator around a jaxmat model.

    Args:
      model: pretrained name, bundle folder path or ``jaxmat.Model`` (default: the embedded
        M3GNet-MP-2021.2.8-PES).
      dtype: "float32" (default) or "float64". float64 runs inside ``jax.enable_x64`` scoped to
        this calculator's calls; the global JAX setting is never changed.
      headroom: padding buckets are allocated at (1 + headroom) x the first structure's sizes.
      growth: when a structure no longer fits, the overflowing bucket grows by at least this
        factor, so the number of compilations stays logarithmic in the size range.
      skin: Verlet skin (A) of the cached vesin neighbour list kept between calls.
      sizing_margin: the triplet bucket holds the triplets of bonds up to the three-body cutoff plus
        this margin (A), so a neighbour shell on the cutoff does not recompile at every crossing.
      checks: thresholds of the structure checks (``jaxmat.graph.StructureChecks``: closest
        approach, neighbour and triplet caps); a failing structure raises ``StructureError``.
      ensemble_mode: for an ensemble: "auto" (``Ensemble.choose_mode``), "vmap" (all members in
        one call) or "sequential" (one member after another, the memory of one).
      ensemble_devices: for an ensemble: split its members over this many devices
        (``Ensemble.shard_members``; members run side by side, mode "vmap"); 1: one device.

    ``n_compilations`` counts how often the energy/force/stress function was traced and compiled.
    The total energy is the float64 sum of the per-atom energies (exact to the last digit of the
    per-atom values, whatever the number of atoms).
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    ensemble_properties = ["energy_std", "forces_std", "stress_std", "energies_members", "forces_members",
                           "stress_members"]

    def __init__(
        self,
        model=DEFAULT_MODEL,
        dtype: str = "float32",
        headroom: float = 0.05,
        growth: float = 1.3,
        skin: float = 1.0,
        sizing_margin: float = 0.15,
        checks: StructureChecks = DEFAULT_CHECKS,
        ensemble_mode: str = "auto",
        ensemble_devices: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value, kind, rule in (("dtype", dtype, "str", one_of("float32", "float64")),
                                        ("headroom", headroom, "float", non_negative()),
                                        ("growth", growth, "float", at_least(1, strict=True)),
                                        ("skin", skin, "float", non_negative()),
                                        ("sizing_margin", sizing_margin, "float", non_negative()),
                                        ("ensemble_mode", ensemble_mode, "str", one_of("auto", "vmap", "sequential")),
                                        ("ensemble_devices", ensemble_devices, "int", at_least(1))):
            check_value("JaxmatCalculator", name, value, kind, rule)
        if not isinstance(checks, StructureChecks):
            raise TypeError(f"JaxmatCalculator.checks must be a jaxmat.graph.StructureChecks, got {type(checks).__name__}")
        self.model = load_model(model)
        if self.model.output_kind != "atoms":
            raise ConfigError(f"JaxmatCalculator.model = {self.model.name!r}: expected a potential (per-atom energies, "
                              f"forces, stress); {self.model.family} maps a structure to one property: use "
                              "model.predict(structures) or jaxmat predict")
        self.dtype = dtype
        self.ensemble_mode = ensemble_mode
        self.ensemble_devices = ensemble_devices
        if ensemble_devices > 1:
            if not isinstance(self.model, Ensemble):
                raise ConfigError(f"JaxmatCalculator.ensemble_devices = {ensemble_devices}: {self.model.name} is not an "
                                  "ensemble (only an ensemble's members are split over devices)")
            if ensemble_mode == "sequential":
                raise ConfigError("JaxmatCalculator: ensemble_mode 'sequential' runs one member after another; members "
                                  "split over devices (ensemble_devices > 1) run side by side ('vmap' or 'auto')")
            if self.model.size % ensemble_devices or ensemble_devices > jax.device_count():
                raise ConfigError(f"JaxmatCalculator.ensemble_devices = {ensemble_devices}: expected a divisor of the "
                                  f"ensemble's {self.model.size} members, at most the {jax.device_count()} devices")
        if isinstance(self.model, Ensemble):
            self.implemented_properties = self.implemented_properties + self.ensemble_properties
        elif self.is_llpr:  # a single model with its last-layer uncertainty (jaxmat.models.LLPRModel)
            self.implemented_properties = self.implemented_properties + self.ensemble_properties[:3]
        self.headroom, self.growth, self.checks, self.sizing_margin = headroom, growth, checks, sizing_margin
        self.sizes: PadSizes | None = None
        self.n_compilations = 0
        self._nl = vesin.NeighborList(cutoff=self.model.cutoff + CUTOFF_TOLERANCE, full_list=True, skin=skin)
        self._fn = jax.jit(self._evaluate, static_argnums=(2, 3))
        self._params = None

    def _evaluate(self, params, graph, compute_stress, mode):
        self.n_compilations += 1  # runs only while tracing
        if mode is not None:  # an ensemble: every member's energy, forces and stress (K, ...)
            return self.model.member_results(params, graph, compute_stress, mode)
        if self.is_llpr:  # row 0: the model; rows 1..r: the gradients of its feature projections
            return self.model.outputs(params, graph, compute_stress)
        return energy_forces_stress(self.model.apply, params, graph, compute_stress)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(np.all(atoms.pbc))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                f"stress needs a cell periodic in all three directions; this structure has pbc={atoms.pbc.tolist()}"
            )
        self.model.check_species(atoms.numbers)
        graph = atoms_to_graph(
            atoms, self.model.cutoff, self.model.three_body_cutoff, self.checks, neighbor_list=self._nl
        )
        real = graph_sizes(graph)
        if self.model.three_body_cutoff is not None and self.sizing_margin > 0:
            hint = sizing_triplets(graph, self.model.three_body_cutoff, self.sizing_margin)
            real = real._replace(n_triplet=max(real.n_triplet, hint))
        self.sizes = grow_sizes(real, self.sizes, self.headroom, self.growth)
        graph = cast_floats(pad_graph(graph, self.sizes), self.dtype)
        with jax.enable_x64(self.dtype == "float64"):
            if self._params is None:
                self._params = jax.tree_util.tree_map(lambda p: jax.numpy.asarray(p, self.dtype), self.model.params)
                if self.ensemble_devices > 1:
                    self._params = self.model.shard_members(self._params, self.ensemble_devices)
            mode = self.model.choose_mode(self.ensemble_mode, self.sizes.n_edge) if self.is_ensemble else None
            mode = "vmap" if self.ensemble_devices > 1 else mode
            out = jax.device_get(self._fn(self._params, graph, periodic, mode))
        n = len(atoms)
        if self.is_ensemble:
            self.results = self._ensemble_results(out, n, periodic)
            return
        if self.is_llpr:
            self.results = self.model.results(out, n, periodic)
            return
        energies = np.asarray(out["energies"][:n], np.float64)
        energy = float(np.sum(energies))  # float64 total: a float32 sum of 2,048 atoms is off by ~0.1 eV
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": energies,
            "forces": np.asarray(out["forces"][:n], np.float64),
        }
        if periodic:
            self.results["stress"] = np.asarray(to_voigt(out["stress"][0]), np.float64)

    @property
    def is_ensemble(self) -> bool:
        return isinstance(self.model, Ensemble)

    @property
    def is_llpr(self) -> bool:
        return isinstance(self.model, LLPRModel)

    def _ensemble_results(self, out, n: int, periodic: bool) -> dict:
        """Means, calibrated spreads (ddof=1 x the bundle's scales) and the members' own values."""
        scale = self.model.spread_scale  # 1 for a quantity the bundle does not calibrate (raw members' std)
        energies = np.asarray(out["energies"][:, :n], np.float64)  # (K, n)
        members = energies.sum(axis=1)  # float64 totals per member
        forces = np.asarray(out["forces"][:, :n], np.float64)
        e_mean, e_std = member_stats(members)
        f_mean, f_std = member_stats(forces)
        res = {"energy": float(e_mean), "free_energy": float(e_mean), "energies": energies.mean(axis=0),
               "forces": f_mean, "energy_std": float(scale("energy") * e_std), "forces_std": scale("forces") * f_std,
               "energies_members": members, "forces_members": forces}
        if periodic:
            stress = np.asarray(to_voigt(out["stress"][:, 0]), np.float64)  # (K, 6)
            s_mean, s_std = member_stats(stress)
            res.update(stress=s_mean, stress_std=scale("stress") * s_std, stress_members=stress)
        return res
