"""The package layout as a contract (issue 25).

Three rules, checked on the source with :mod:`ast` (nothing is imported):

- no import cycles among labo's modules (module-level and function-level imports;
  imports under ``if TYPE_CHECKING:`` are for annotations only and do not count);
- no module reads or writes another labo module's private names: ``from m import _name``
  of a labo module, or ``x._name`` on an object other than ``self``/``cls`` where
  ``_name`` is a private name some other labo module defines (a function, class,
  module variable or ``self._name`` attribute) and this module does not. Dunder names
  are public. A module may use the private members of its own class on another
  instance (``new._outputs = ...``). Private members of third-party objects (torch's
  ``Tensor._version``, ``nn.Module._modules``) are not layout: where labo needs one, a
  comment at the use says why;
- each ``labo/`` file is at most :data:`MAX_LINES` lines.

Each rule has a self-test on synthetic sources, so a checker that finds nothing
because it is broken fails too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "labo"
MAX_LINES = 400

# Private reads that remain, as (module, name). Only ever remove entries: the test
# fails on a new violation and on an entry that no longer occurs.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


# ---------------------------------------------------------------------- the checkers
def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST):
    """Every node except those inside an ``if TYPE_CHECKING:`` block."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, source: str, modules: set[str], is_package: bool = False) -> set[str]:
    """The labo modules that ``module`` imports at run time (any nesting level)."""
    out = set()
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, node, is_package)
            # `from pkg import sub` imports the submodule pkg.sub when there is one.
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
        else:
            continue
        out.update(n for n in names if n in modules and n != module)
    return out


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def own_private_names(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, classes, variables, ``self._x`` attributes."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                own.add(node.attr)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "register_buffer":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                own.add(node.args[0].value)
    return {n for n in own if _private(n)}


def private_accesses(module: str, source: str, labo_private: set[str], is_package: bool = False) -> set[str]:
    """The private names of other labo modules that ``module`` imports or uses.

    Args:
        module: The module's dotted name.
        source: Its source.
        labo_private: Every private name some labo module defines (:func:`own_private_names`).
        is_package: Whether the source is a package's ``__init__``.
    """
    tree = ast.parse(source)
    foreign = labo_private - own_private_names(tree)
    found = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.ImportFrom):
            target = _absolute(module, node, is_package)
            if target.split(".")[0] == "labo":
                found.update(a.name for a in node.names if _private(a.name))
        elif isinstance(node, ast.Attribute) and node.attr in foreign:
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.add(node.attr)
    return found


def _sources() -> dict[str, tuple[Path, str]]:
    return {module_name(p): (p, p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


# ---------------------------------------------------------------------- the package
def test_no_import_cycles():
    sources = _sources()
    modules = set(sources)
    graph = {m: imports_of(m, src, modules, path.name == "__init__.py") for m, (path, src) in sources.items()}
    # A package's __init__ re-exports its modules: an edge from a module to its own
    # package (or a parent) is how `from labo.laplace import X` reads, not a cycle of design.
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    assert find_cycles(graph) == []


def test_no_private_access_across_modules():
    sources = _sources()
    labo_private = set().union(*(own_private_names(ast.parse(src)) for _, src in sources.values()))
    found = set()
    for m, (path, src) in sources.items():
        found |= {(m, name) for name in private_accesses(m, src, labo_private, path.name == "__init__.py")}
    assert found - KNOWN_VIOLATIONS == set(), "new private access across modules"
    assert KNOWN_VIOLATIONS - found == set(), "stale KNOWN_VIOLATIONS entries: remove them"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_file_length(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines (at most {MAX_LINES})"


# ---------------------------------------------------------------------- self-tests
def test_checker_finds_a_cycle_through_a_function_level_import():
    mods = {"labo.a", "labo.b", "labo.c"}
    a = "from labo.b import f\n"
    b = "def g():\n    from labo.a import h\n"
    c = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from labo.a import h\n"
    graph = {
        "labo.a": imports_of("labo.a", a, mods),
        "labo.b": imports_of("labo.b", b, mods),
        "labo.c": imports_of("labo.c", c, mods),
    }
    assert graph == {"labo.a": {"labo.b"}, "labo.b": {"labo.a"}, "labo.c": set()}
    assert find_cycles(graph) == [["labo.a", "labo.b"]]
    assert find_cycles({"labo.a": {"labo.b"}, "labo.b": set()}) == []


def test_checker_resolves_relative_and_submodule_imports():
    mods = {"labo.p", "labo.p.x", "labo.p.y"}
    assert imports_of("labo.p.x", "from . import y\nfrom .y import f\n", mods) == {"labo.p.y"}
    assert imports_of("labo.p", "from labo.p import x\n", mods, is_package=True) == {"labo.p.x"}


def test_checker_finds_private_access():
    labo_private = {"_helper", "_state", "_mine", "_T"}  # as other labo modules define them
    src = (
        "from labo.b import _helper, public\n"
        "from torch import _C\n"
        "class M:\n"
        "    def __init__(self):\n"
        "        self._mine = 1\n"
        "    def copy(self, other):\n"
        "        other._mine = self._mine + self._theirs\n"
        "        return other._state, type(other).__name__, other.__dict__\n"
    )
    # _C: torch's, not layout; _mine: this module's own attribute; _theirs: on self
    assert private_accesses("labo.a", src, labo_private) == {"_helper", "_state"}
    guarded = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from labo.b import _T\n"
    assert private_accesses("labo.a", guarded, labo_private) == set()
    assert own_private_names(ast.parse(src)) == {"_mine"}
