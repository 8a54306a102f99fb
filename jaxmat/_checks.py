"""One validation mechanism for every setting a user hands jaxmat.

Settings are dataclasses: the training config's sections, the MD settings, the structure checks,
the model families' hyperparameters. Each field's annotation is its type (``float``, ``int``,
``str | None``, ``list[str]``, ``dict[str, float]``, ``Sequence[int]``, ...) and an optional
``RULES`` class attribute maps field names to a ``Rule`` (a range or a set of choices).
``check_fields(cls, values, where)`` checks a mapping of field values against both and raises
``ConfigError`` naming the place, the field, the value and what is expected, e.g.::

    config: optim.learning_rate = '5e-3' (str): expected a finite number, > 0

Numbers are strict: a string is never a number, ``true`` is not an integer, an integer field takes
no fractional value, a float field takes no NaN or infinity.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from jaxmat.errors import ConfigError


class Rule(NamedTuple):
    """A constraint on a field's value beyond its type: ``ok(value)`` and its description."""

    ok: Callable[[Any], bool]
    expect: str


def at_least(lo: float, strict: bool = False) -> Rule:
    """``value >= lo`` (``> lo`` when ``strict``)."""
    return Rule((lambda v: v > lo) if strict else (lambda v: v >= lo), f"{'>' if strict else '>='} {lo:g}")


def positive() -> Rule:
    return at_least(0, strict=True)


def non_negative() -> Rule:
    return at_least(0)


def between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """``lo <= value <= hi``; either end open on request."""
    def ok(v):
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    return Rule(ok, f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")


def one_of(*choices) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(repr(c) for c in choices))


def each(rule: Rule) -> Rule:
    """``rule`` for every value of a list or mapping."""
    def ok(v):
        values = v.values() if isinstance(v, Mapping) else v
        return all(rule.ok(x) for x in values)

    return Rule(ok, f"each {rule.expect}")


def chemical_symbols_rule() -> Rule:
    """A non-empty list of distinct chemical symbols (the element order of a model)."""
    from ase.data import atomic_numbers

    def ok(v):
        return len(v) > 0 and len(set(v)) == len(v) and all(atomic_numbers.get(s, 0) > 0 for s in v)

    return Rule(ok, "a non-empty list of distinct chemical symbols")


_WORDS = {"None": "null/None", "bool": "true or false", "int": "an integer", "float": "a finite number",
          "str": "a string", "dict": "a mapping (JSON object)", "list": "a list"}
_PLURALS = {"bool": "booleans", "int": "integers", "float": "finite numbers", "str": "strings"}


def _split(annotation: str) -> list[str]:
    """Top-level alternatives of a type annotation string (``a | b[c | d]`` -> [a, b[c | d]])."""
    parts, depth, cur = [], 0, ""
    for ch in annotation:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return parts + [cur.strip()]


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _matches(value, t: str) -> bool:
    if t == "None":
        return value is None
    if t == "Any":
        return True
    if t == "bool":
        return isinstance(value, (bool, np.bool_))
    if t == "int":
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if t == "float":
        try:
            return _is_number(value) and math.isfinite(float(value))
        except OverflowError:  # an integer beyond float range
            return False
    if t == "str":
        return isinstance(value, str)
    if t in ("dict", "Mapping"):
        return isinstance(value, Mapping)
    if t in ("list", "Sequence", "tuple"):
        return isinstance(value, (list, tuple))
    m = re.fullmatch(r"(list|tuple|Sequence)\[(.+?)(, \.\.\.)?\]", t)
    if m:
        return isinstance(value, (list, tuple)) and all(_matches_any(v, m.group(2)) for v in value)
    m = re.fullmatch(r"(dict|Mapping)\[str, (.+)\]", t)
    if m:
        return isinstance(value, Mapping) and all(isinstance(k, str) and _matches_any(v, m.group(2))
                                                  for k, v in value.items())
    raise TypeError(f"jaxmat._checks cannot check the annotation {t!r}")


def _matches_any(value, annotation: str) -> bool:
    return any(_matches(value, t) for t in _split(annotation))


def describe_type(annotation: str) -> str:
    """``"float | None"`` -> ``"a finite number or null/None"``."""
    words = []
    for t in _split(annotation):
        m = re.fullmatch(r"(list|tuple|Sequence)\[(.+?)(, \.\.\.)?\]", t)
        d = re.fullmatch(r"(dict|Mapping)\[str, (.+)\]", t)
        if m:
            words.append(f"a list of {_PLURALS.get(m.group(2), m.group(2))}")
        elif d:
            words.append(f"a mapping of names to {_PLURALS.get(d.group(2), d.group(2))}")
        else:
            words.append(_WORDS.get(t, t))
    return " or ".join(words)


def _annotation(field: dataclasses.Field) -> str:
    t = field.type
    if isinstance(t, str):
        return t.replace("typing.", "")
    return getattr(t, "__name__", str(t))


def check_value(where: str, name: str, value, annotation: str, rule: Rule | None = None) -> None:
    """Raise ConfigError unless ``value`` has type ``annotation`` and satisfies ``rule``
    (``None`` values skip the rule)."""
    label = f"{where}.{name}" if where else name
    text = repr(value)
    shown = f"{text if len(text) <= 80 else text[:77] + '...'} ({type(value).__name__})"
    if not _matches_any(value, annotation):
        expect = describe_type(annotation) + (f", {rule.expect}" if rule else "")
        raise ConfigError(f"{label} = {shown}: expected {expect}")
    if rule is not None and value is not None:
        try:
            ok = bool(rule.ok(value))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"{label} = {shown}: expected {rule.expect}")


def fields_of(cls) -> dict[str, dataclasses.Field]:
    """The user-settable fields of a settings dataclass or Flax module (not ``parent``/``name``)."""
    return {f.name: f for f in dataclasses.fields(cls) if f.name not in ("parent", "name") and f.init}


def check_fields(cls, values, where: str, required: tuple = ()) -> None:
    """Check a mapping of field values against ``cls``'s annotations and ``cls.RULES``.

    Unknown keys and missing ``required`` ones are errors; absent keys keep their defaults (which
    are not re-checked).
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping (JSON object) of settings, got {type(values).__name__}: "
                          f"{values!r:.80}")
    fields = fields_of(cls)
    unknown = sorted(set(values) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(fields)}")
    missing = [k for k in required if k not in values]
    if missing:
        raise ConfigError(f"{where}: required setting(s) {missing} missing")
    rules = getattr(cls, "RULES", {})
    for name, value in values.items():
        check_value(where, name, value, _annotation(fields[name]), rules.get(name))


def check_instance(obj, where: str) -> None:
    """``check_fields`` on every field of a dataclass instance."""
    check_fields(type(obj), {k: getattr(obj, k) for k in fields_of(type(obj))}, where)


def rules_text(cls) -> dict[str, str]:
    """Field name -> human-readable type and rule, for ``--describe``-style listings."""
    rules = getattr(cls, "RULES", {})
    return {n: describe_type(_annotation(f)) + (f", {rules[n].expect}" if n in rules else "")
            for n, f in fields_of(cls).items()}
