"""The package's modules import each other without circles (issue 30: a newcomer reads them in order).

Every `import logitsdump...` counts, also those inside functions: a circle hidden in a function is still one
a reader has to untangle. Imports under `if TYPE_CHECKING:` (names for type hints only, never run) and a
package's `__init__` re-exporting its modules are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "logitsdump"


def _modules() -> dict[str, Path]:
    found = {}
    for file in PACKAGE.rglob("*.py"):
        parts = file.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of the package it imports (package `__init__`s left out)."""
    modules = _modules()
    packages = {name for name, file in modules.items() if file.name == "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        targets: set[str] = set()
        tree = ast.parse(file.read_text(encoding="utf-8"))
        hints = {id(n) for block in ast.walk(tree) if _type_checking(block) for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in hints:
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("logitsdump"):
                for alias in node.names:
                    whole = f"{node.module}.{alias.name}"
                    targets.add(whole if whole in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("logitsdump"))
        graph[name] = {t for t in targets if t in modules and t not in packages and t != name}
    return graph


def _type_checking(node: ast.AST) -> bool:
    """An `if TYPE_CHECKING:` block."""
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (circle := visit(target)):
                return circle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (circle := visit(node)):
            return circle
    return None


def test_find_circle_finds_one():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 50 and graph["logitsdump.cli"]  # the walk saw the package
    assert find_circle(graph) is None, " -> ".join(find_circle(graph) or [])
