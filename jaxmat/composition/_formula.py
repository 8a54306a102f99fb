"""Chemical formula parser: "Fe2O3", "Ag(W3Br7)2", "Fe0.5Ni0.5", "CaMg(CO3)2" -> {element: amount}."""

from __future__ import annotations

import re

from ase.data import chemical_symbols

from jaxmat.errors import FormulaError

_KNOWN = set(chemical_symbols[1:])
_TOKEN = re.compile(r"([A-Z][a-z]?)|(\()|(\))|(\d+(?:\.\d+)?|\.\d+)|(\s+)")


def parse_formula(formula: str) -> dict[str, float]:
    """Amounts of each element (brackets multiplied out, repeated elements summed).

    Raises FormulaError with the position of the problem for malformed input, e.g. an unknown
    element symbol ("Xx2"), a lowercase start ("fe2o3"), unbalanced brackets, a dangling number,
    a zero amount, or an empty formula.
    """
    if not isinstance(formula, str) or not formula.strip():
        raise FormulaError(f"empty formula {formula!r}")
    stack: list[dict[str, float]] = [{}]
    last: dict[str, float] | str | None = None  # what a following number multiplies
    pos = 0
    while pos < len(formula):
        m = _TOKEN.match(formula, pos)
        if not m:
            raise FormulaError(f"formula {formula!r}: unexpected character {formula[pos]!r} at position {pos}")
        sym, open_, close, num, space = m.groups()
        if sym:
            if sym not in _KNOWN:
                raise FormulaError(f"formula {formula!r}: unknown element {sym!r} at position {pos}")
            stack[-1][sym] = stack[-1].get(sym, 0.0) + 1.0
            last = sym
        elif open_:
            stack.append({})
            last = None
        elif close:
            if len(stack) == 1:
                raise FormulaError(f"formula {formula!r}: ')' at position {pos} has no matching '('")
            group = stack.pop()
            if not group:
                raise FormulaError(f"formula {formula!r}: empty brackets before position {pos}")
            for el, n in group.items():
                stack[-1][el] = stack[-1].get(el, 0.0) + n
            last = group
        elif num:
            value = float(num)
            if last is None:
                raise FormulaError(f"formula {formula!r}: number {num!r} at position {pos} follows no element or group")
            if value <= 0:
                raise FormulaError(f"formula {formula!r}: amount {num!r} at position {pos} must be positive")
            if isinstance(last, str):
                stack[-1][last] += value - 1.0
            else:  # a closed group: scale what it added
                for el, n in last.items():
                    stack[-1][el] += n * (value - 1.0)
            last = None
        pos = m.end()
    if len(stack) != 1:
        raise FormulaError(f"formula {formula!r}: unclosed '('")
    if not stack[0]:
        raise FormulaError(f"formula {formula!r} holds no element")
    return stack[0]


def fractions(formula: str) -> dict[str, float]:
    """Atomic fractions (summing to 1)."""
    amounts = parse_formula(formula)
    total = sum(amounts.values())
    return {el: n / total for el, n in amounts.items()}
