"""The import graph of one package, read from its source with `ast` (nothing is imported), and
the cycles in it.

A module's edges are the modules of the same package its import statements name, wherever they
stand: at the top, inside functions (lazy imports) or in ``try`` blocks. Only the body of an
``if TYPE_CHECKING:`` block is left out (it never runs); its ``else`` branch counts. Imports
of other packages are left out.

Resolution: ``import a.b.c`` and ``from a.b import c`` name ``a.b.c`` when that is a module of
the package (else the longest prefix that is); ``from a.b import name`` names ``a.b`` when
``name`` is not a submodule. Relative imports resolve against the importing module's package.
The parent packages Python imports on the way (``a`` and ``a.b`` for ``import a.b.c``) are not
edges: an ``__init__`` that re-exports its submodules would otherwise put every submodule on a
cycle. Imports through ``importlib`` or ``__import__`` are not seen.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path


def module_names(package_dir: Path, package: str) -> dict[str, Path]:
    """Every module of the package (``pkg``, ``pkg.sub``, ...) and its source file."""
    modules: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements under `node` that can run, i.e. not under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                if isinstance(other, ast.Import | ast.ImportFrom):
                    yield other
                else:
                    yield from _runtime_imports(other)
        else:
            yield from _runtime_imports(child)


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """`name` or its longest prefix that is a module of the package."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _imported(
    statement: ast.Import | ast.ImportFrom, module: str, path: Path, modules: dict[str, Path]
) -> Iterator[str]:
    if isinstance(statement, ast.Import):
        for alias in statement.names:
            found = _known(alias.name, modules)
            if found is not None:
                yield found
        return
    if statement.level:
        # The package a relative import starts from: the module itself for an __init__.
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = base[: len(base) - (statement.level - 1)]
        source = ".".join([*base, statement.module] if statement.module else base)
    else:
        source = statement.module or ""
    for alias in statement.names:
        submodule = f"{source}.{alias.name}"
        if submodule in modules:
            yield submodule
            continue
        found = _known(source, modules)
        if found is not None:
            yield found


def import_graph(package_dir: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (see the module docstring)."""
    modules = module_names(package_dir, package)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[module] = {
            target
            for statement in _runtime_imports(tree)
            for target in _imported(statement, module, path, modules)
        }
    return graph


def find_cycles(package_dir: Path, package: str) -> list[list[str]]:
    """Import cycles of the package, each as its modules in import order (the first imports the
    second, ..., the last imports the first); empty when the graph has none.

    A depth-first search reports the cycle each back edge closes: not every cycle of a tangled
    graph, but at least one whenever there is any, so an empty answer means acyclic. A module
    importing itself is a cycle of one.
    """
    graph = import_graph(package_dir, package)
    cycles: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(module: str) -> None:
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target in on_stack:
                cycle = stack[stack.index(target) :]
                # One entry per cycle, whichever module the search met first.
                first = cycle.index(min(cycle))
                key = tuple(cycle[first:] + cycle[:first])
                if key not in seen:
                    seen.add(key)
                    cycles.append(list(key))
            elif target not in done:
                visit(target)
        stack.pop()
        on_stack.discard(module)
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module)
    return cycles
