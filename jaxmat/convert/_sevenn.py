"""Convert a torch ``sevenn`` checkpoint (SevenNet-0, SevenNet-l3i5, ...) to a jaxmat bundle.

Needs torch (``pip install 'jaxmat[convert]'``), not sevenn. The checkpoint, a torch pickle, is read
with ``torch.load(..., weights_only=True)`` and an explicit allow-list of the numpy types its config
holds (arrays of shifts and scales); nothing else is unpickled.

Mapping (sevenn 0.9-0.13, e3nn 0.6; conventions in ``jaxmat.nn._irreps``):

* e3nn ``Linear`` weights are flat, one (mul_in, mul_out) block per pair of equal irreps; with node
  irreps of one entry per l these are jaxmat's per-l matrices ``w{l}`` (the gate's input irreps
  are sorted and merged by e3nn, so scalars and gates form one l = 0 block, scalars first);
* the last radial-MLP layer gives the tensor-product path weights; checkpoints written before
  sevenn 0.11 order them in e3nn's instruction order, newer ones grouped by output l (jaxmat's
  order), and old ones stored some Clebsch-Gordan buffers with the opposite sign: those paths'
  weights are negated, as sevenn's own loader does;
* per-element shift/scale -> ``energy_scale`` (element_refs, scale, element_scale).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

from jaxmat.errors import ConversionError
from jaxmat.models import Model, check_params, expected_param_shapes
from jaxmat.nn import parse_irreps, uvu_paths

#: sevenn's old (< 0.10) module names -> the current ones
_OLD_NAMES = {"EdgeEmbedding": "edge_embedding", "reducing nn input to hidden": "reduce_input_to_hidden",
              "reducing nn hidden to energy": "reduce_hidden_to_energy", "rescale atomic energy": "rescale_atomic_energy"}
for _t in range(10):
    for _part in ("self connection intro", "convolution", "self interaction 2", "equivariant gate"):
        _OLD_NAMES[f"{_t} {_part}"] = f"{_t}_{_part.replace(' ', '_')}"
#: state-dict entries that are constants of e3nn/sevenn, not weights (checked elsewhere or unused)
#: training data of the checkpoints sevenn ships (folder name in ``sevenn/pretrained_potentials``)
TRAINING_DATA = {
    "SevenNet_0__11Jul2024": "MPtrj (Materials Project relaxation trajectories, PBE/PBE+U; CHGNet's data set)",
    "SevenNet_0__22May2024": "MPtrj (Materials Project relaxation trajectories, PBE/PBE+U; CHGNet's data set)",
    "SevenNet_l3i5": "MPtrj (Materials Project relaxation trajectories, PBE/PBE+U; CHGNet's data set)",
}
_IGNORED = (".output_mask", "._w3j_", "convolution.convolution.weight", "equivariant_gate.gate.mul.weight",
            ".linear.bias")


def read_checkpoint(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(config, state dict as float numpy arrays) of a sevenn checkpoint, read weights-only."""
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConversionError("converting sevenn checkpoints needs torch: pip install 'jaxmat[convert]'") from None
    allow = [(np._core.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
             np.dtypes.Float32DType, np.dtypes.Float64DType, np.dtypes.Int64DType, np.dtypes.Int32DType]
    try:
        with torch.serialization.safe_globals(allow):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, FileNotFoundError, ...
        raise ConversionError(f"{path}: not a loadable sevenn checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model_state_dict" not in ckpt:
        raise ConversionError(f"{path}: not a sevenn checkpoint (expected a dict with 'config' and 'model_state_dict')")

    def plain(v):
        if hasattr(v, "detach"):
            return v.detach().cpu().numpy()
        return v

    config = {k: plain(v) for k, v in ckpt["config"].items()}
    sd = {k: np.asarray(plain(v)) for k, v in ckpt["model_state_dict"].items()}
    return config, sd


def _version(config) -> tuple[tuple[int, ...], str]:
    v = str(config.get("version", ""))
    parts = v.split(".")
    try:
        return tuple(int(x) for x in parts[:3]), ".".join(parts[3:])
    except ValueError:
        raise ConversionError(f"sevenn checkpoint: unreadable version {v!r}") from None


def _check_supported(cfg: dict) -> None:
    if cfg.get("use_modality", False):
        modal = cfg.get("_modal_map") or cfg.get("modal_map") or {}
        raise ConversionError(
            "this is a multi-fidelity sevenn model (e.g. SevenNet-MF-0): its energies depend on a fidelity input "
            f"({', '.join(map(str, modal)) or 'modal'}) that jaxmat's graph does not carry; it is not supported. "
            "Convert a single-fidelity checkpoint (SevenNet-0, SevenNet-l3i5)")
    checks = [("interaction_type", "nequip"), ("is_parity", False), ("readout_as_fcn", False),
              ("use_bias_in_linear", False), ("act_radial", "silu")]
    for key, want in checks:
        if cfg.get(key, want) != want:
            raise ConversionError(f"sevenn checkpoint: {key} = {cfg.get(key)!r} is not supported (jaxmat's SevenNet "
                                  f"port needs {want!r})")
    sc = cfg.get("self_connection_type", "nequip")
    if any(s != "linear" for s in ([sc] if isinstance(sc, str) else sc)):
        raise ConversionError(f"sevenn checkpoint: self_connection_type {sc!r} is not supported (only 'linear')")
    for key in ("act_scalar", "act_gate"):
        if dict(cfg.get(key, {})).get("e", "silu") != "silu":
            raise ConversionError(f"sevenn checkpoint: {key} {cfg.get(key)!r} is not supported (only silu)")
    if cfg.get("radial_basis", {}).get("radial_basis_name", "bessel") != "bessel":
        raise ConversionError(f"sevenn checkpoint: radial basis {cfg.get('radial_basis')!r} is not supported")


def _node_irreps(cfg: dict) -> list[str]:
    n = int(cfg["num_convolution_layer"])
    manual = cfg.get("irreps_manual", False)
    if manual:
        irreps = [str(s) for s in manual]
        if len(irreps) != n + 1:
            raise ConversionError(f"sevenn checkpoint: irreps_manual has {len(irreps)} entries for {n} layers")
        return irreps
    c, lmax = int(cfg["channel"]), int(cfg["lmax"])
    lmax_node = int(cfg.get("lmax_node", -1)) if int(cfg.get("lmax_node", -1)) > 0 else lmax
    lmax_sh = int(cfg.get("lmax_edge", -1)) if int(cfg.get("lmax_edge", -1)) > 0 else lmax
    irreps, ls = [f"{c}x0e"], {0}
    for t in range(n):
        ls = {0} if t == n - 1 else {l3 for l1 in ls for l2 in range(lmax_sh + 1)
                                      for l3 in range(abs(l1 - l2), l1 + l2 + 1) if l3 <= lmax_node}
        irreps.append("+".join(f"{c}x{l}e" for l in sorted(ls)))
    return irreps


def _hyperparameters(cfg: dict, sd: dict, irreps: list[str]) -> dict:
    version, _ = _version(cfg)
    cut = dict(cfg["cutoff_function"])
    lmax = int(cfg["lmax"])
    n = len(irreps) - 1
    denominators = []
    for t in range(n):
        key = f"{t}_convolution.denominator"
        if key not in sd:
            raise ConversionError(f"sevenn checkpoint: no {key} in the state dict")
        denominators.append(float(np.asarray(sd[key], np.float32).reshape(-1)[0]))
    normalize = cfg.get("_normalize_sph", False if version[:2] <= (0, 9) else True)  # sevenn's own default
    species = list(cfg["chemical_species"])
    type_map = {int(z): int(i) for z, i in dict(cfg.get("_type_map", {})).items()}
    from ase.data import atomic_numbers

    if type_map and any(type_map.get(atomic_numbers[s]) != i for i, s in enumerate(species)):
        raise ConversionError("sevenn checkpoint: chemical_species and _type_map disagree on the element order")
    return {
        "element_types": species,
        "irreps": irreps,
        "lmax_sh": int(cfg["lmax_edge"]) if int(cfg.get("lmax_edge", -1)) > 0 else lmax,
        "normalize_sh": bool(normalize),
        "cutoff": float(cfg["cutoff"]),
        "cutoff_function": cut["cutoff_function_name"],
        "cutoff_on": float(cut.get("cutoff_on", 4.5)),
        "poly_p": int(cut.get("poly_cut_p_value", 6)),
        "num_basis": int(cfg.get("radial_basis", {}).get("bessel_basis_num", 8)),
        "radial_hidden": [int(w) for w in cfg["weight_nn_hidden_neurons"]],
        "conv_denominator": denominators,
    }


def _linear(flat: np.ndarray, muls_in: dict, muls_out: dict, where: str) -> dict:
    """e3nn Linear flat weights -> {'w{l}': (mul_in, mul_out)} (one irreps entry per l each side)."""
    expected = sum(mi * muls_out[l] for l, mi in muls_in.items() if l in muls_out)
    if expected != flat.size:
        raise ConversionError(f"sevenn checkpoint: {where} has {flat.size} weights, expected {expected}")
    out, start = {}, 0
    for l, mi in muls_in.items():
        if l in muls_out:
            out[f"w{l}"] = flat[start:start + mi * muls_out[l]].reshape(mi, muls_out[l])
            start += mi * muls_out[l]
    return out


def _radial_last(sd: dict, t: int, muls_in: dict, lmax_sh: int, ls_out: tuple, old_layout: bool) -> np.ndarray:
    """The last radial layer's columns in jaxmat's path order, signs matched to e3nn's CG."""
    import e3nn_jax as e3nn

    key = f"{t}_convolution.weight_nn.layer{{}}.weight"
    n_layers = sum(1 for k in sd if k.startswith(f"{t}_convolution.weight_nn.layer"))
    w = sd[key.format(n_layers - 1)]
    sorted_paths = uvu_paths(tuple(muls_in), lmax_sh, ls_out)
    natural = [(l1, l2, l3) for l1 in muls_in for l2 in range(lmax_sh + 1)
               for l3 in range(abs(l1 - l2), l1 + l2 + 1) if l3 in ls_out]
    stored = natural if old_layout else [tuple(p) for p in sorted_paths]
    blocks, start = {}, 0
    for p in stored:
        blocks[p] = w[:, start:start + muls_in[p[0]]]
        start += muls_in[p[0]]
    if start != w.shape[1]:
        raise ConversionError(f"sevenn checkpoint: layer {t} radial MLP gives {w.shape[1]} weights, expected {start}")
    cols = []
    for p in sorted_paths:
        block = blocks[tuple(p)]
        buf = sd.get(f"{t}_convolution.convolution._compiled_main_left_right._w3j_{p.l_in}_{p.l_sh}_{p.l_out}")
        if old_layout and buf is not None and min(p) > 0:
            cg = np.asarray(e3nn.clebsch_gordan(*p), np.float64)
            if np.allclose(buf, -cg, atol=1e-6):
                block = -block
            elif not np.allclose(buf, cg, atol=1e-6):
                raise ConversionError(f"sevenn checkpoint: layer {t} Clebsch-Gordan buffer {tuple(p)} matches "
                                      "neither sign of e3nn's")
        cols.append(block)
    return np.concatenate(cols, axis=1)


def sevennet_from_checkpoint(cfg: dict, sd: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Map a sevenn (config, state dict) to jaxmat SevenNet (hyperparameters, params)."""
    _check_supported(cfg)
    version, suffix = _version(cfg)
    sd = {_rename(k): v for k, v in sd.items()}
    irreps = _node_irreps(cfg)
    hyper = _hyperparameters(cfg, sd, irreps)
    old_layout = version < (0, 11, 0) or (version == (0, 11, 0) and suffix == "dev0")
    used = set()

    def take(key):
        if key not in sd:
            raise ConversionError(f"sevenn checkpoint: missing tensor {key}")
        used.add(key)
        return np.asarray(sd[key], np.float64)

    n_types = len(hyper["element_types"])
    muls = [parse_irreps(s) for s in irreps]
    coeffs_key = "edge_embedding.basis_function.coeffs"
    coeffs = take(coeffs_key) if coeffs_key in sd else np.pi / hyper["cutoff"] * np.arange(1, hyper["num_basis"] + 1)
    p = {"radial_basis": {"coeffs": coeffs},
         "node_embedding": {"embedding": take("onehot_to_feature_x.linear.weight").reshape(n_types, muls[0][0])}}
    for t in range(len(irreps) - 1):
        m_in, m_out = muls[t], muls[t + 1]
        n_gates = sum(m for l, m in m_out.items() if l > 0)
        gate_in = {l: m + (n_gates if l == 0 else 0) for l, m in m_out.items()}
        ls_out = tuple(range(max(m_out) + 1))
        paths = uvu_paths(tuple(m_in), hyper["lmax_sh"], ls_out)
        tp_out = {}
        for path in paths:
            tp_out[path.l_out] = tp_out.get(path.l_out, 0) + m_in[path.l_in]
        n_radial = sum(1 for k in sd if k.startswith(f"{t}_convolution.weight_nn.layer"))
        radial = {f"layer_{k}": take(f"{t}_convolution.weight_nn.layer{k}.weight") for k in range(n_radial - 1)}
        radial[f"layer_{n_radial - 1}"] = _radial_last(sd, t, m_in, hyper["lmax_sh"], ls_out, old_layout)
        used.add(f"{t}_convolution.weight_nn.layer{n_radial - 1}.weight")
        used.add(f"{t}_convolution.denominator")
        p[f"interaction_{t}"] = {
            "self_connection": _linear(take(f"{t}_self_connection_intro.linear.weight"), m_in, gate_in, f"{t} sc"),
            "linear_1": _linear(take(f"{t}_self_interaction_1.linear.weight"), m_in, m_in, f"{t} linear 1"),
            "radial": radial,
            "linear_2": _linear(take(f"{t}_self_interaction_2.linear.weight"), tp_out, gate_in, f"{t} linear 2"),
        }
    hidden = max(sum(m * (2 * l + 1) for l, m in muls[-1].items()) // 2, 1)
    p["readout_hidden"] = _linear(take("reduce_input_to_hidden.linear.weight"), muls[-1], {0: hidden}, "readout")
    p["readout"] = _linear(take("reduce_hidden_to_energy.linear.weight"), {0: hidden}, {0: 1}, "readout")
    shift = np.broadcast_to(take("rescale_atomic_energy.shift").reshape(-1), (n_types,))
    scale = np.broadcast_to(take("rescale_atomic_energy.scale").reshape(-1), (n_types,))
    common = bool(np.all(scale == scale[0]))
    p["energy_scale"] = {"element_refs": shift, "scale": np.asarray(scale[0] if common else 1.0),
                         "element_scale": np.ones(n_types) if common else scale}
    for key, v in sd.items():
        if key in used or any(s in key for s in _IGNORED):
            if ".linear.bias" in key and np.size(v):
                raise ConversionError(f"sevenn checkpoint: {key} holds biases; jaxmat's SevenNet has none")
            continue
        raise ConversionError(f"sevenn checkpoint: tensor {key} {np.shape(v)} has no place in jaxmat's SevenNet")
    params = _to_float32(p)
    return hyper, params


def _rename(key: str) -> str:
    head, _, rest = key.partition(".")
    rest = rest.replace("denumerator", "denominator")
    return f"{_OLD_NAMES.get(head, head)}.{rest}" if rest else _OLD_NAMES.get(head, head)


def _to_float32(tree):
    if isinstance(tree, dict):
        return {k: _to_float32(v) for k, v in tree.items()}
    return np.asarray(tree, np.float32)


def convert_sevenn(src, dst, name: str | None = None) -> Model:
    """Convert the sevenn checkpoint ``src`` (.pth) into the jaxmat bundle folder ``dst``."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise ConversionError(f"{src}: no such sevenn checkpoint file")
    cfg, sd = read_checkpoint(src)
    hyper, params = sevennet_from_checkpoint(cfg, sd)
    check_params(params, expected_param_shapes("SevenNet", hyper), str(src))
    name = name or src.parent.name
    lic = _find_license(src)
    metadata = {
        "name": name,
        "origin": f"sevenn checkpoint {src.parent.name}/{src.name} (MDIL-SNU/SevenNet, written by sevenn "
                  f"{cfg.get('version')}), converted by jaxmat",
        "license": "MIT (sevenn); see LICENSE in this folder" if lic else "unknown: no sevenn LICENSE found",
        "source_checkpoint_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
        "training_data": TRAINING_DATA.get(src.parent.name, "not recorded in the checkpoint"),
        "units": {"energy": "eV", "length": "Angstrom"},
        "precision": "trained and evaluated by sevenn in float32",
    }
    model = Model("SevenNet", hyper, params, metadata)
    model.save(dst)
    if lic:
        shutil.copyfile(lic, dst / "LICENSE")
    return model


def _find_license(src: Path) -> Path | None:
    """sevenn's LICENSE: beside the checkpoint, or in the installed package's dist-info (a checkpoint
    shipped in ``site-packages/sevenn/pretrained_potentials/...``)."""
    if (src.parent / "LICENSE").is_file():
        return src.parent / "LICENSE"
    for parent in src.resolve().parents:
        if parent.name == "sevenn":
            found = sorted(parent.parent.glob("sevenn-*.dist-info/licenses/LICENSE"))
            found += sorted(parent.parent.glob("sevenn-*.dist-info/LICENSE"))
            return found[0] if found else None
    return None
