"""Convert a matgl model folder (``model.json`` + ``state.pt``) to a jaxmat bundle.

Needs torch (``pip install jaxmat[convert]``); the state dict is read with
``torch.load(..., weights_only=True)``, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from jaxmat.convert._common import load_state_dict
from jaxmat.convert._megnet import megnet_from_matgl
from jaxmat.errors import ConversionError
from jaxmat.models import Model, check_params, expected_param_shapes


def _family(model_json: dict) -> str:
    inner = model_json.get("kwargs", {}).get("model", {}) if model_json.get("@class") != "MEGNet" else model_json
    if model_json.get("@class") == "Potential" and inner.get("@class") == "M3GNet":
        return "M3GNet"
    if inner.get("@class") == "MEGNet":
        return "MEGNet"
    raise ConversionError(f"unsupported matgl model {model_json.get('@class')}({inner.get('@class')}); "
                          "supported: Potential(M3GNet), MEGNet, TransformedTargetModel(MEGNet)")


def _gated(sd, prefix, n_linear, bias=True):
    """matgl GatedMLP (Sequential Linear at indices 0, 2, 4, ...) -> jaxmat GatedMLP params."""
    out = {}
    for branch in ("layers", "gates"):
        for k in range(n_linear):
            out[f"{branch}_{k}_kernel"] = sd[f"{prefix}.{branch}.{2 * k}.weight"].T
            if bias:
                out[f"{branch}_{k}_bias"] = sd[f"{prefix}.{branch}.{2 * k}.bias"]
    return out


def m3gnet_from_matgl(model_json: dict, sd: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Map a matgl ``Potential(M3GNet)`` to (hyperparameters, params)."""
    if model_json.get("@class") != "Potential":
        raise ConversionError(f"expected a matgl Potential, got {model_json.get('@class')}")
    inner = model_json["kwargs"]["model"]
    if inner.get("@class") != "M3GNet":
        raise ConversionError(f"expected an M3GNet model, got {inner.get('@class')}")
    a = inner["init_args"]
    if a.get("is_intensive") or a.get("include_state") or a.get("use_phi"):
        raise ConversionError("only extensive M3GNet potentials without state or phi are supported")
    nblocks = int(a["nblocks"])
    n_readout = len([k for k in sd if k.startswith("model.final_layer.gated.layers.") and k.endswith("weight")])
    readout = [int(sd[f"model.final_layer.gated.layers.{2 * k}.weight"].shape[0]) for k in range(n_readout)]
    hyper = {
        "element_types": list(a["element_types"]),
        "dim_node": int(a["dim_node_embedding"]),
        "dim_edge": int(a["dim_edge_embedding"]),
        "units": int(a["units"]),
        "max_n": int(a["max_n"]),
        "max_l": int(a["max_l"]),
        "nblocks": nblocks,
        "cutoff": float(a["cutoff"]),
        "threebody_cutoff": float(a["threebody_cutoff"]),
        "rbf_type": "smooth_spherical_bessel" if a.get("use_smooth") else "spherical_bessel",
        "readout_features": readout,
    }
    p = {
        "node_embedding": {"embedding": sd["model.embedding.layer_node_embedding.weight"]},
        "edge_embedding": {
            "kernel": sd["model.embedding.layer_edge_embedding.layers.0.weight"].T,
            "bias": sd["model.embedding.layer_edge_embedding.layers.0.bias"],
        },
        "readout": _gated(sd, "model.final_layer.gated", n_readout),
        "energy_scale": {
            "element_refs": sd["element_refs.property_offset"],
            "scale": sd["data_std"].reshape(()),
            "shift": sd["data_mean"].reshape(()),
        },
    }
    for b in range(nblocks):
        tb, conv = f"model.three_body_interactions.{b}", f"model.graph_layers.{b}.conv"
        p[f"three_body_{b}_atom"] = {
            "kernel": sd[f"{tb}.update_network_atom.layers.0.weight"].T,
            "bias": sd[f"{tb}.update_network_atom.layers.0.bias"],
        }
        p[f"three_body_{b}_bond"] = _gated(sd, f"{tb}.update_network_bond", 1, bias=False)
        for part in ("edge", "node"):
            p[f"conv_{b}_{part}"] = _gated(sd, f"{conv}.{part}_update_func", 3)
            p[f"conv_{b}_{part}_weight"] = {"kernel": sd[f"{conv}.{part}_weight_func.weight"].T}
    p = {k: {n: np.asarray(v, np.float32) for n, v in d.items()} for k, d in p.items()}
    return hyper, p


SEMANTICS = {
    "M3GNet": "DGL-era matgl: node messages summed onto destination atoms; triplets "
    "(i->j, i->k) within the three-body cutoff, summed onto bond i->j",
    "MEGNet": "DGL-era matgl: node update averages incoming (destination) bond features; "
    "output de-normalised by the matgl Normalizer (target_mean, target_std)",
}


def convert_matgl(src, dst, name: str | None = None) -> Model:
    """Convert ``src`` (a matgl pretrained-model folder) into the jaxmat bundle folder ``dst``."""
    src, dst = Path(src), Path(dst)
    model_json = json.loads((src / "model.json").read_text())
    state_file = src / "state.pt"
    family = _family(model_json)
    sd = load_state_dict(state_file)
    try:
        hyper, params = (m3gnet_from_matgl if family == "M3GNet" else megnet_from_matgl)(model_json, sd)
    except KeyError as err:
        raise ConversionError(f"{state_file}: missing tensor {err} for {family}") from None
    check_params(params, expected_param_shapes(family, hyper), str(src))
    name = name or src.name
    metadata = {
        "name": name,
        "origin": f"matgl pretrained model {src.name} (materialsvirtuallab/matgl), converted by jaxmat",
        "license": "BSD-3-Clause (matgl); see LICENSE in this folder",
        "source_state_sha256": hashlib.sha256(state_file.read_bytes()).hexdigest(),
        "semantics": SEMANTICS[family],
        "units": {"energy": "eV", "length": "Angstrom"} if family == "M3GNet" else
        {"target": "eV/atom" if "Eform" in src.name else "as trained", "length": "Angstrom"},
    }
    if family == "MEGNet":  # structure -> property models of matgl are trained on Materials Project crystals
        metadata["periodic_only"] = True
    model = Model(family, hyper, params, metadata)
    model.save(dst)
    for extra, target in (("README.md", "README-matgl.md"),):
        if (src / extra).is_file():
            shutil.copyfile(src / extra, dst / target)
    lic = src / "LICENSE" if (src / "LICENSE").is_file() else src.parent / "LICENSE"
    if lic.is_file():
        shutil.copyfile(lic, dst / "LICENSE")
    return model
