"""Composition featurisers: ElemNet element fractions and Magpie-style descriptor statistics."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxmat.composition._formula import FormulaError, fractions

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


def descriptor_names(property_names: Sequence[str]) -> list[str]:
    return [f"{stat}_{p}" for p in property_names for stat in STATS]


def magpie_descriptors(formulas: Sequence[str], table: dict[str, np.ndarray]) -> np.ndarray:
    """(n, 6 * n_props) Magpie-style statistics: fraction-weighted mean, mean absolute deviation,
    min, max, range, and the value of the most abundant element. Raises FormulaError for an
    element the table lacks."""
    n_props = len(next(iter(table.values())))
    out = np.zeros((len(formulas), n_props * len(STATS)), np.float32)
    for i, f in enumerate(formulas):
        fr = fractions(f)
        missing = [el for el in fr if el not in table]
        if missing:
            raise FormulaError(f"formula {f!r}: no element properties for {', '.join(missing)}")
        w = np.array(list(fr.values()))
        p = np.stack([table[el] for el in fr])  # (n_el, n_props)
        mean = w @ p
        stats = [mean, w @ np.abs(p - mean), p.min(0), p.max(0), p.max(0) - p.min(0), p[np.argmax(w)]]
        out[i] = np.stack(stats, axis=1).ravel()
    return out


def featurize(formulas: Sequence[str], kind: str = "fractions", table_path=None) -> np.ndarray:
    """``kind``: "fractions" (86 ElemNet fractions), "magpie" (descriptor statistics of the table at
    ``table_path``) or "fractions+magpie" (both, concatenated)."""
    parts = []
    if kind not in ("fractions", "magpie", "fractions+magpie"):
        raise ValueError(f"unknown featurisation {kind!r}; expected fractions, magpie or fractions+magpie")
    if "fractions" in kind:
        parts.append(element_fractions(formulas))
    if "magpie" in kind:
        if table_path is None or not Path(table_path).is_file():
            raise FileNotFoundError(f"element property table {table_path} not found")
        parts.append(magpie_descriptors(formulas, read_element_table(table_path)[0]))
    return np.concatenate(parts, axis=1)
