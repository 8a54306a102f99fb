"""matgl ``TransformedTargetModel(MEGNet)`` state dict -> jaxmat MEGNet (hyperparameters, params)."""

from __future__ import annotations

import re

import numpy as np

from jaxmat.convert._common import MATGL_DEFAULT_ELEMENTS
from jaxmat.errors import ConversionError


def _mlp(sd, prefix, n_linear):
    """matgl MLP (Sequential Linear at indices 0, 2, 4, ...) -> jaxmat MLP params."""
    return {f"layers_{k}": {"kernel": sd[f"{prefix}.layers.{2 * k}.weight"].T,
                            "bias": sd[f"{prefix}.layers.{2 * k}.bias"]} for k in range(n_linear)}


def _lstm(sd, prefix):
    if f"{prefix}.weight_ih_l1" in sd:
        raise ConversionError("Set2Set with more than one LSTM layer is not supported")
    return {"kernel_ih": sd[f"{prefix}.weight_ih_l0"].T, "kernel_hh": sd[f"{prefix}.weight_hh_l0"].T,
            "bias_ih": sd[f"{prefix}.bias_ih_l0"], "bias_hh": sd[f"{prefix}.bias_hh_l0"]}


def _normalizer(text: str) -> tuple[float, float]:
    """Mean and std from model.json's ``"Normalizer: Mean=..., Std: ..."`` (no unpickling)."""
    m = re.fullmatch(r"\s*Normalizer:\s*Mean\s*=\s*([-+0-9.eE]+),\s*Std\s*:\s*([-+0-9.eE]+)\s*", str(text))
    if not m:
        raise ConversionError(f"cannot read the target transformer {text!r}; expected a Normalizer")
    return float(m.group(1)), float(m.group(2))


def megnet_from_matgl(model_json: dict, sd: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Map a matgl MEGNet (optionally wrapped in a ``TransformedTargetModel`` with a Normalizer)."""
    mean, std, inner = 0.0, 1.0, model_json
    if model_json.get("@class") == "TransformedTargetModel":
        inner = model_json["kwargs"]["model"]
        mean, std = _normalizer(model_json["kwargs"].get("target_transformer"))
    if inner.get("@class") != "MEGNet":
        raise ConversionError(f"expected a MEGNet model, got {inner.get('@class')}")
    a = inner["init_args"]
    if a.get("ntypes_state") or a.get("is_classification") or a.get("dropout"):
        raise ConversionError("only MEGNet regressors with a float state and no dropout are supported")
    if int(a.get("nlayers_set2set", 1)) != 1:
        raise ConversionError("only single-layer Set2Set LSTMs are supported")
    sd = {k.removeprefix("model."): v for k, v in sd.items()}
    centers = sd["bond_expansion.rbf.centers"]
    expected = np.linspace(0.0, float(a["cutoff"]) + 1.0, int(a["dim_edge_embedding"]))
    if centers.shape != expected.shape or np.abs(centers - expected).max() > 1e-5:
        raise ConversionError("bond expansion centres are not linspace(0, cutoff + 1, n)")
    nblocks, hin = int(a["nblocks"]), list(a["hidden_layer_sizes_input"])
    hconv, hout = list(a["hidden_layer_sizes_conv"]), list(a["hidden_layer_sizes_output"])
    hyper = {
        "element_types": list(a.get("element_types") or MATGL_DEFAULT_ELEMENTS),
        "dim_node_embedding": int(a["dim_node_embedding"]),
        "n_gaussians": int(a["dim_edge_embedding"]),
        "gauss_width": float(a["gauss_width"]),
        "gauss_final": float(a["cutoff"]) + 1.0,
        "dim_state": int(a["dim_state_embedding"]),
        "nblocks": nblocks,
        "hidden_input": hin,
        "hidden_conv": hconv,
        "hidden_output": hout,
        "niters_set2set": int(a["niters_set2set"]),
        "activation": str(a["activation_type"]),
        "cutoff": float(a["cutoff"]),
        "target_mean": mean,
        "target_std": std,
    }
    p = {
        "node_embedding": {"embedding": sd["embedding.layer_node_embedding.weight"]},
        "edge_encoder": _mlp(sd, "edge_encoder", len(hin)),
        "node_encoder": _mlp(sd, "node_encoder", len(hin)),
        "state_encoder": _mlp(sd, "state_encoder", len(hin)),
        "node_set2set": {"lstm": _lstm(sd, "node_s2s.lstm")},
        "edge_set2set": {"lstm": _lstm(sd, "edge_s2s.lstm")},
        "output": _mlp(sd, "output_proj", len(hout) + 1),
    }
    for b in range(nblocks):
        for part in ("edge", "node", "state"):
            p[f"block_{b}_{part}"] = _mlp(sd, f"blocks.{b}.conv.{part}_func", len(hconv))
            if b > 0:
                p[f"block_{b}_{part}_dense"] = _mlp(sd, f"blocks.{b}.{part}_func", len(hin))
    cast = lambda t: {k: cast(v) if isinstance(v, dict) else np.asarray(v, np.float32) for k, v in t.items()}  # noqa: E731
    return hyper, cast(p)
