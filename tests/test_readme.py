"""The README and the docs/ pages cannot drift: every shell command and Python snippet in them runs as
written, from a copy of the repository (a fresh clone's files, ``../shared`` beside it), every jaxmat name
they give exists where they say, and every docs page is linked from the README.

Markers, HTML comments on the lines just above a fenced block (invisible on GitHub):

    <!-- readme-test: skip -- REASON -->              the whole block is not run
    <!-- readme-test: slow -- REASON -->              the whole block runs only with ``-m slow``
    <!-- readme-test: skip "PREFIX" -- REASON -->     commands starting with PREFIX are not run
    <!-- readme-test: slow "PREFIX" -- REASON -->     commands starting with PREFIX run only with ``-m slow``

A shell line's ``cmd1 && cmd2`` parts are separate commands (so ``python -m pip install -e . && jaxmat md
...`` runs the MD, not the install), ``# ...`` comments are dropped, and a trailing ``&`` is kept. Every
marker needs a reason and must match a command. Unmarked commands run in the default suite, so they must
be cheap (mark anything longer than about a minute ``slow`` or ``skip``): the commands of each file (README.md,
then each docs/*.md) in the file's order, in one copy of the repository per file (a later command may read an
earlier one's output of the same file, never another file's), and must leave ``git status`` clean there
(their outputs are in .gitignore). Python snippets run one by one, each in a fresh namespace (no snippet
may lean on another's variables). A fenced block without a language (a log excerpt) is not run.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: the files whose commands and snippets run: the README, then the docs pages
FILES = [README, *sorted(DOCS.glob("*.md"))]
SHARED = ROOT.parent / "shared"
MARKER = re.compile(r'<!--\s*readme-test:\s*(skip|slow)\s*(?:"([^"]+)")?\s*--\s*(.*?)\s*-->')
#: exceptions the README may name that are not jaxmat's (Python's, ASE's, Flax's)
FOREIGN_ERRORS = {"ValueError", "RuntimeError", "TypeError", "OSError", "KeyError", "UserWarning",
                  "PropertyNotImplementedError", "ScopeParamShapeError", "KeyboardInterrupt"}


class Marker(NamedTuple):
    action: str  # "skip" or "slow"
    prefix: str | None  # None: the whole block
    reason: str


class Block(NamedTuple):
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    markers: tuple[Marker, ...]


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def readme_blocks(text: str | None = None, path: Path = README) -> list[Block]:
    """The fenced code blocks of ``path`` (or of ``text``) with the markers on the lines just above each."""
    lines = (path.read_text() if text is None else text).splitlines()
    blocks, k = [], 0
    while k < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[k])
        if not m or not m.group(1):
            k += 1
            continue
        markers, j = [], k - 1
        while j >= 0 and lines[j].startswith("<!-- readme-test"):
            mk = MARKER.fullmatch(lines[j].strip())
            assert mk, f"{_name(path)} line {j + 1}: malformed marker {lines[j]!r}"
            markers.insert(0, Marker(mk.group(1), mk.group(2), mk.group(3)))
            j -= 1
        end = next(e for e in range(k + 1, len(lines)) if lines[e].startswith("```"))
        blocks.append(Block(k + 1, m.group(1), "\n".join(lines[k + 1:end]), tuple(markers)))
        k = end + 1
    return blocks


def shell_commands(block: Block) -> list[tuple[str, str]]:
    """``(command, policy)`` for each command of a bash block; policy "run", "slow" or "skip"."""
    out = []
    for line in block.code.replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()  # comments (no README command quotes a '#')
        for part in filter(None, (p.strip() for p in line.split("&&"))):
            policy = "run"
            for mk in block.markers:
                if mk.prefix is None or part.startswith(mk.prefix):
                    policy = "skip" if "skip" in (policy, mk.action) else "slow"
            out.append((part, policy))
    return out


def _commands(policies, path: Path = README) -> list[str]:
    return [c for b in readme_blocks(path=path) if b.lang == "bash" for c, p in shell_commands(b) if p in policies]


def test_markers_have_reasons_and_match_commands():
    assert len(FILES) > 1, "no docs/*.md pages"
    for path in FILES:
        blocks, where = readme_blocks(path=path), _name(path)
        assert {b.lang for b in blocks} <= {"bash", "python"}, f"a {where} block in a language this test does not run"
        for b in blocks:
            for mk in b.markers:
                assert len(mk.reason) > 10, f"{where} line {b.line}: marker without a reason: {mk}"
                if mk.prefix is not None:
                    assert b.lang == "bash", f"{where} line {b.line}: a command prefix on a {b.lang} block"
                    assert any(c.startswith(mk.prefix) for c, _ in shell_commands(b)), (
                        f"{where} line {b.line}: marker {mk.prefix!r} matches no command of its block (stale?)")
    assert _commands({"run"}), "no README command runs in the default suite"


def test_every_docs_page_is_linked_and_every_link_resolves():
    """The README links each docs page; each relative link of the README and the pages names a file
    that exists (anchors are not checked: the pages link files, not headings)."""
    readme = README.read_text()
    unlinked = [_name(p) for p in FILES[1:] if f"({_name(p)})" not in readme]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
    broken = []
    for path in FILES:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if not re.match(r"[a-z]+:", target) and not (path.parent / target.split("#")[0]).exists():
                broken.append(f"{_name(path)}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_marker_parsing():
    text = ('<!-- readme-test: skip "pip install" -- the environment is already installed -->\n'
            "```bash\npip install -e . && jaxmat md Si --steps 3  # a comment\n# only a comment\n"
            "jaxmat list\n```\n\n<!-- readme-test: slow -- takes a few minutes here -->\n```python\nx = 1\n```\n")
    bash, py = readme_blocks(text)
    assert shell_commands(bash) == [("pip install -e .", "skip"), ("jaxmat md Si --steps 3", "run"), ("jaxmat list", "run")]
    assert py.lang == "python" and py.markers[0].action == "slow" and py.markers[0].prefix is None


def _fresh_copy(tmp_path: Path) -> Path:
    """The repository's files (tracked and untracked-not-ignored, as a clone of the working tree would
    have them) in ``tmp_path/<repo name>``, committed to a new git repository; ``../shared`` beside it
    links to the real shared folder when there is one."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    copy = tmp_path / ROOT.name
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, copy / rel)
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)
    git = ["git", "-c", "user.name=readme-test", "-c", "user.email=readme-test@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "copy"]):
        subprocess.run(git + cmd, cwd=copy, check=True, capture_output=True)
    return copy


def _run_commands(tmp_path: Path, commands: list[str]) -> None:
    copy = _fresh_copy(tmp_path)
    bindir = str(Path(sys.executable).parent)  # `jaxmat` and `python` of this environment
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
           "JAXMAT_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "xla"))}
    not_run = []
    for cmd in commands:
        if "../shared" in cmd and not SHARED.is_dir():
            not_run.append(cmd)
            continue
        out = subprocess.run(["bash", "-c", cmd], cwd=copy, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"command failed ({out.returncode}): {cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        assert "Traceback" not in out.stderr, f"{cmd}\n{out.stderr[-3000:]}"
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=copy, capture_output=True,
                            text=True, check=True).stdout
    assert status == "", f"commands left files that git status shows (add them to .gitignore):\n{status}"
    if not_run:
        pytest.skip(f"ran {len(commands) - len(not_run)} commands; not {not_run}: ../shared is absent")


def _files_with(policies) -> list:
    """One param per file that has commands of these policies (id: its path)."""
    return [pytest.param(p, id=_name(p)) for p in FILES if _commands(policies, p)]


@pytest.mark.parametrize("path", _files_with({"run"}))
def test_readme_commands_run_as_written(tmp_path, path):
    """Every unmarked command of one file (in order; ~1-2 min in all on this 2-core CPU), then a clean
    git status."""
    _run_commands(tmp_path, _commands({"run"}, path))


@pytest.mark.slow
@pytest.mark.parametrize("path", _files_with({"slow"}))
def test_slow_readme_commands_run_as_written(tmp_path, path):
    _run_commands(tmp_path, _commands({"slow"}, path))


def _snippet_params():
    params = []
    for path in FILES:
        for b in readme_blocks(path=path):
            if b.lang != "python":
                continue
            actions = {mk.action for mk in b.markers}
            marks = ([pytest.mark.skip(reason=b.markers[0].reason)] if "skip" in actions
                     else [pytest.mark.slow] if "slow" in actions else [])
            params.append(pytest.param(path, b, marks=marks, id=f"{_name(path)}:line{b.line}"))
    return params


@pytest.mark.parametrize("path, block", _snippet_params())
def test_readme_python_snippet_runs_on_its_own(path, block):
    """In a fresh namespace: a snippet that uses a name from another one fails here."""
    exec(compile(block.code, f"{_name(path)}:{block.line}", "exec"), {"__name__": "__readme__"})


def _resolve(dotted: str):
    """The object ``jaxmat.a.b.C`` names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ModuleNotFoundError:
            continue
        for name in parts[k:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def test_names_the_readme_gives_are_where_it_says():
    """Each `jaxmat.x.Name` in the README and the docs pages resolves, each `SomethingError` is in
    jaxmat.errors (or is Python's, ASE's or Flax's), and the Python names of their import lines exist."""
    import jaxmat.errors

    spans = []
    for path in FILES:
        prose = re.sub(r"^```\w*\n.*?^```$", "", path.read_text(), flags=re.S | re.M)  # blocks run above
        spans += re.findall(r"`([^`]+)`", prose)  # inline code, which may wrap over a line end
    dotted = {m for s in spans for m in re.findall(r"\bjaxmat(?:\.\w+)+", s)}
    assert {"jaxmat.errors.NeighborOverflowError", "jaxmat.simulate.MDSettings",
            "jaxmat.composition.match_budget"} <= dotted
    missing = []
    for name in sorted(dotted):
        try:
            _resolve(name)
        except (ImportError, AttributeError) as err:
            missing.append(f"{name}: {err}")
    assert not missing, "README/docs names that do not exist where they say:\n" + "\n".join(missing)
    errors = {m for s in spans for m in re.findall(r"\b[A-Z]\w*Error\b", s)}
    assert not errors - FOREIGN_ERRORS - set(jaxmat.errors.__all__), "README/docs exceptions not in jaxmat.errors"
