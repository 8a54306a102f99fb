"""Composition featurisers: ElemNet element fractions, Magpie-style descriptor statistics and
Magpie composition attributes (stoichiometry norms, valence-orbital fractions, ionic character)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxmat.composition._formula import fractions
from jaxmat.errors import FormulaError

#: ElemNet's 86 elements (Jha et al., Sci. Rep. 2018): H-Pu without He, Ne, Ar, Po, At, Rn, Fr, Ra.
ELEMNET_ELEMENTS = (
    "H Li Be B C N O F Na Mg Al Si P S Cl K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr "
    "Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W "
    "Re Os Ir Pt Au Hg Tl Pb Bi Ac Th Pa U Np Pu"
).split()
assert len(ELEMNET_ELEMENTS) == 86

#: statistics of each element property over a composition (fraction-weighted where it applies)
STATS = ("mean", "avg_dev", "min", "max", "range", "mode")


def element_fractions(formulas: Sequence[str], elements: Sequence[str] = ELEMNET_ELEMENTS) -> np.ndarray:
    """(n, len(elements)) atomic fractions. Raises FormulaError for a malformed formula or an
    element outside ``elements``."""
    index = {el: k for k, el in enumerate(elements)}
    out = np.zeros((len(formulas), len(elements)), np.float32)
    for i, f in enumerate(formulas):
        for el, x in fractions(f).items():
            if el not in index:
                raise FormulaError(f"formula {f!r}: element {el} is outside the {len(elements)}-element input vector")
            out[i, index[el]] = x
    return out


def read_element_table(path) -> tuple[dict[str, np.ndarray], list[str]]:
    """An element property table (CSV: ``element,prop1,prop2,...``) -> ({symbol: values}, names).
    Missing entries become the column mean (documented in the descriptor names as-is)."""
    rows = list(csv.reader(open(path)))
    names = rows[0][1:]
    symbols = [r[0] for r in rows[1:]]
    vals = np.array([[float(x) if x.strip() not in ("", "nan", "NaN") else np.nan for x in r[1:]] for r in rows[1:]])
    col_mean = np.nanmean(vals, axis=0)
    vals = np.where(np.isnan(vals), col_mean, vals)
    return dict(zip(symbols, vals)), names


def element_embedding_table(path, elements: Sequence[str] = ELEMNET_ELEMENTS) -> np.ndarray:
    """(len(elements), E) element embedding (e.g. mat2vec) read from an element table, rows in
    ``elements`` order, each column standardised to zero mean and unit std (for ``ElementAttention``).
    Raises ValueError naming the elements the table lacks."""
    table, _ = read_element_table(path)
    missing = [el for el in elements if el not in table]
    if missing:
        raise ValueError(f"{path}: no embedding for {', '.join(missing)}")
    t = np.stack([table[el] for el in elements])
    return (t - t.mean(0)) / np.where(t.std(0) > 0, t.std(0), 1.0)


def _fractions_and_properties(formula: str, table: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(n_el,) atomic fractions and (n_el, n_props) element properties of ``formula``. Raises
    FormulaError for an element the table lacks."""
    fr = fractions(formula)
    missing = [el for el in fr if el not in table]
    if missing:
        raise FormulaError(f"formula {formula!r}: no element properties for {', '.join(missing)}")
    return np.array(list(fr.values())), np.stack([table[el] for el in fr])


def magpie_descriptors(formulas: Sequence[str], table: dict[str, np.ndarray]) -> np.ndarray:
    """(n, 6 * n_props) Magpie-style statistics: fraction-weighted mean, mean absolute deviation,
    min, max, range, and the value of the most abundant element. Raises FormulaError for an
    element the table lacks."""
    n_props = len(next(iter(table.values())))
    out = np.zeros((len(formulas), n_props * len(STATS)), np.float32)
    for i, f in enumerate(formulas):
        w, p = _fractions_and_properties(f, table)
        mean = w @ p
        stats = [mean, w @ np.abs(p - mean), p.min(0), p.max(0), p.max(0) - p.min(0), p[np.argmax(w)]]
        out[i] = np.stack(stats, axis=1).ravel()
    return out


#: composition attributes of Ward et al. (npj Comput. Mater. 2016) beyond the property statistics
ATTRIBUTE_NAMES = (
    ("n_elements",) + tuple(f"stoich_l{p}" for p in (2, 3, 5, 7, 10))
    + tuple(f"frac_{o}_valence" for o in "spdf") + ("max_ionic_char", "mean_ionic_char")
)
_VALENCE_COLUMNS = ("NsValence", "NpValence", "NdValence", "NfValence")


def composition_attributes(formulas: Sequence[str], table: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """(n, 12) Magpie composition attributes (Ward et al. 2016) that the property statistics miss:
    the number of elements and the L2/L3/L5/L7/L10 norms of the fractions; the fraction of valence
    electrons in s, p, d and f orbitals (sum_i x_i N_o,i / sum_i x_i N_valence,i; 0 if no valence
    electrons); the maximum pairwise ionic character 1 - exp(-(chi_i - chi_j)^2 / 4) and its
    fraction-weighted mean over ordered pairs. ``names``: the table's column names, which must
    include Electronegativity and the four N*Valence columns."""
    missing = [c for c in _VALENCE_COLUMNS + ("Electronegativity",) if c not in names]
    if missing:
        raise ValueError(f"element table lacks the column(s) {', '.join(missing)} needed for composition attributes")
    val = [list(names).index(c) for c in _VALENCE_COLUMNS]
    chi = list(names).index("Electronegativity")
    out = np.zeros((len(formulas), len(ATTRIBUTE_NAMES)), np.float32)
    for i, f in enumerate(formulas):
        x, p = _fractions_and_properties(f, table)
        shells = x @ p[:, val]  # (4,) fraction-weighted s, p, d, f valence electrons
        total = shells.sum()
        ionic = 1.0 - np.exp(-0.25 * (p[:, chi][:, None] - p[:, chi][None, :]) ** 2)
        out[i] = np.concatenate([
            [len(x)], [np.sum(x**q) ** (1.0 / q) for q in (2, 3, 5, 7, 10)],
            shells / total if total > 0 else np.zeros(4),
            [ionic.max(), x @ ionic @ x],
        ])
    return out


FEATURE_PARTS = ("fractions", "magpie", "attributes")


def featurize(formulas: Sequence[str], kind: str = "fractions", table_path=None) -> np.ndarray:
    """``kind``: parts joined by "+", concatenated in the order given: "fractions" (86 ElemNet
    fractions), "magpie" (6 statistics of every property of the table at ``table_path``),
    "attributes" (the 12 composition attributes of ``composition_attributes``; needs a Magpie
    table). E.g. "fractions+magpie" or "fractions+magpie+attributes"."""
    parts = kind.split("+")
    if any(k not in FEATURE_PARTS for k in parts) or len(set(parts)) != len(parts):
        raise ValueError(f"unknown featurisation {kind!r}; expected parts of {'+'.join(FEATURE_PARTS)}, each at most once")
    table = None
    if "magpie" in parts or "attributes" in parts:
        if table_path is None or not Path(table_path).is_file():
            raise FileNotFoundError(f"element property table {table_path} not found")
        table = read_element_table(table_path)
    out = []
    for k in parts:
        if k == "fractions":
            out.append(element_fractions(formulas))
        elif k == "magpie":
            out.append(magpie_descriptors(formulas, table[0]))
        else:
            out.append(composition_attributes(formulas, *table))
    return np.concatenate(out, axis=1)
