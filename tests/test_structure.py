"""The package's structure (issue 48), read from the source with ``ast`` (nothing is imported):

* no import cycle between jaxmat modules (module-level and function-level imports both count);
* no function-level import of a jaxmat module unless marked ``# deferred: <why>`` (a heavy optional
  dependency, the command line's per-subcommand start-up): on the import, or on the line just
  before a run of consecutive imports; a module whose every function defers its imports by design
  (the command line) says so once, in a line ``# deferred-module: <why>``;
* no import of another package's private module from inside ``jaxmat/`` (``jaxmat.models._model``
  from ``jaxmat.train``): siblings use the package's ``__init__``. A package's own private modules,
  and those of the packages that contain it (``jaxmat._checks``), are fine;
* no module over 400 lines, no function over 80 lines except argument-parser tables.

``KNOWN`` lists what still fails while other work on those modules is in progress; an entry that
no longer fails makes ``test_known_exceptions_are_still_needed`` fail, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxmat"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80
#: calls that make a function an argument-parser table (exempt from the function length)
PARSER_CALLS = {"add_argument", "add_parser", "add_subparsers", "add_argument_group", "add_mutually_exclusive_group",
                "set_defaults", "ArgumentParser"}

#: (rule, item) -> why it is still allowed. Items: "module -> imported" (imports), "module" (module
#: length), "module.function" (function length).
KNOWN: dict = {}


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _package(module: str) -> str:
    """The package a module belongs to (a package's ``__init__`` belongs to the package itself)."""
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _targets(module: str, node) -> list[str]:
    """The jaxmat modules an import statement loads (``from pkg import sub`` names the submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "jaxmat"]
    base = node.module or ""
    if node.level:
        up = _package(module).split(".")
        base = ".".join(up[: len(up) - node.level + 1] + ([base] if base else []))
    if base.split(".")[0] != "jaxmat":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _imports(module: str):
    """(target, line, in a function, marked deferred) of every jaxmat import of ``module``."""
    source = MODULES[module].read_text()
    lines = source.splitlines()
    whole = any(line.startswith("# deferred-module:") for line in lines)
    out = []

    def marked(run) -> bool:  # a run of consecutive import statements: the comment before it, or on it
        before = lines[run[0].lineno - 2].strip() if run[0].lineno > 1 else ""
        return (before.startswith("#") and "# deferred:" in before) or any(
            "# deferred:" in line for line in lines[run[0].lineno - 1 : run[-1].end_lineno])

    def visit(body, in_function: bool) -> None:
        run = []
        for stmt in body + [None]:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                run.append(stmt)
                continue
            if run:
                deferred = whole or marked(run)
                out.extend((t, s.lineno, in_function, deferred) for s in run for t in _targets(module, s))
                run = []
            if stmt is None:
                continue
            inner = in_function or isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef))
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(stmt, field, None)
                if isinstance(children, list) and children:
                    if field == "handlers":
                        for h in children:
                            visit(h.body, inner)
                    else:
                        visit(children, inner)

    visit(ast.parse(source).body, False)
    return out


IMPORTS = {m: _imports(m) for m in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), over all imports."""
    graph = {m: sorted({t for t, *_ in IMPORTS[m] if t in MODULES and t != m}) for m in MODULES}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            connect(v)
    return out


def _private_target(module: str, target: str) -> bool:
    """Whether ``target`` is a private module of a package that does not contain ``module``."""
    parts = target.split(".")
    for i, part in enumerate(parts[1:], 1):
        if part.startswith("_"):
            owner, home = ".".join(parts[:i]), _package(module)
            return not (home == owner or home.startswith(owner + "."))
    return False


def _is_parser_table(fn) -> bool:
    stmts = [n for n in ast.walk(fn) if isinstance(n, ast.stmt)][1:]
    calls = [s for s in stmts if any(isinstance(c, ast.Call) and getattr(c.func, "attr", getattr(c.func, "id", None))
                                     in PARSER_CALLS for c in ast.walk(s))]
    return len(calls) >= 0.6 * max(len(stmts), 1)


def violations() -> dict[tuple[str, str], str]:
    """Every (rule, item) that fails, with a description."""
    found = {}
    for comp in _cycles():
        found[("cycle", " <-> ".join(comp))] = "modules that import each other (directly or around a loop)"
    for m, imports in IMPORTS.items():
        for target, line, in_function, deferred in imports:
            if in_function and not deferred and target != m:
                found[("function-level import", f"{m} -> {target}")] = f"{MODULES[m]}:{line}, not marked '# deferred:'"
            if _private_target(m, target):
                found[("private import", f"{m} -> {target}")] = f"{MODULES[m]}:{line}"
    for m, path in MODULES.items():
        source = path.read_text()
        n = len(source.splitlines())
        if n > MAX_MODULE_LINES:
            found[("module length", m)] = f"{n} lines"
        for fn in ast.walk(ast.parse(source)):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = fn.end_lineno - fn.lineno + 1
                if length > MAX_FUNCTION_LINES and not _is_parser_table(fn):
                    found[("function length", f"{m}.{fn.name}")] = f"{path}:{fn.lineno}, {length} lines"
    return found


def test_the_scan_sees_the_package():
    """The rules read what they claim to: every module, the known import edges and markers."""
    assert {"jaxmat.models._load", "jaxmat.models._model", "jaxmat.cli", "jaxmat.train._evaluate"} <= set(MODULES)
    load = {t for t, *_ in IMPORTS["jaxmat.models._load"]}
    assert {"jaxmat.models._model", "jaxmat.models._ensemble", "jaxmat.models._bundle"} <= load
    plots = [(t, f, d) for t, _, f, d in IMPORTS["jaxmat.train._plots"]]
    assert ("jaxmat.train._loss", False, False) in plots  # a module-level import
    assert _private_target("jaxmat.train._evaluate", "jaxmat.models._predict")
    assert not _private_target("jaxmat.models._load", "jaxmat.models._model")
    assert not _private_target("jaxmat.train._report", "jaxmat._io")


@pytest.mark.parametrize("rule", ["cycle", "function-level import", "private import", "module length", "function length"])
def test_rule_holds(rule):
    bad = {item: what for (r, item), what in violations().items() if r == rule and (r, item) not in KNOWN}
    assert not bad, f"{rule}: " + "; ".join(f"{item} ({what})" for item, what in sorted(bad.items()))


def test_known_exceptions_are_still_needed():
    stale = sorted(set(KNOWN) - set(violations()))
    assert not stale, f"these no longer fail: remove them from KNOWN in {__file__}: {stale}"
