"""The packages' import graph, read from the source (ast): no module imports itself back
through others, and each wing imports only what its ``__init__`` docstring allows. Every
import counts, also those under ``if TYPE_CHECKING:`` and inside functions: a cycle hidden
from the interpreter is still a circle in the design."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gateway", "runtime", "registry")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
    }


def imported(tree: ast.AST, known: set[str], package: str) -> Iterator[str]:
    """The modules of ``known`` that a module's source imports (``from a import b`` counts
    as ``a.b`` when that is a module, else as ``a``); relative imports are resolved against
    ``package``, the importing module's package."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            module = absolute(node.module or "", node.level, package)
            for alias in node.names:
                child = f"{module}.{alias.name}" if module else alias.name
                if child in known:
                    yield child
                elif module in known:
                    yield module


def absolute(module: str, level: int, package: str) -> str:
    """``from ..x import y`` in package ``a.b`` imports from ``a.x``."""
    if level == 0:
        return module
    base = package.split(".")[: len(package.split(".")) - (level - 1)]
    return ".".join([*base, module] if module else base)


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    graph = {}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = set(imported(ast.parse(path.read_text(), str(path)), known, package))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as a path ``[a, b, ..., a]``, or [] (depth-first, three colours)."""
    colour = dict.fromkeys(graph, 0)  # 0 unseen, 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        colour[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == 1:
                return [*path[path.index(nxt) :], nxt]
            if colour[nxt] == 0 and (cycle := visit(nxt)):
                return cycle
        path.pop()
        colour[node] = 2
        return []

    for start in sorted(graph):
        if colour[start] == 0 and (cycle := visit(start)):
            return cycle
    return []


def test_find_cycle_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve_against_the_package() -> None:
    known = {"gateway.node", "gateway.mesh.api", "gateway.mesh.peers"}
    tree = ast.parse("from ..node import Node\nfrom . import peers\nfrom .. import node")
    assert set(imported(tree, known, "gateway.mesh")) == {"gateway.node", "gateway.mesh.peers"}


def test_the_graph_sees_type_checking_and_function_level_imports() -> None:
    graph = import_graph()
    assert "runtime.pool" in graph["gateway.invoke"]  # under TYPE_CHECKING
    assert "gateway.server" in graph["gateway.cli.main"]  # inside a function


def test_no_module_imports_itself_back() -> None:
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " → ".join(cycle)


# (importer prefix, imported prefix, why not)
FORBIDDEN = [
    ("runtime", "gateway", "the runtime knows nothing of HTTP or the mesh"),
    ("registry", "gateway", "the registry knows nothing of HTTP or the mesh"),
    ("gateway", "gateway.cli", "the node's modules never import the client side"),
]
# Modules that compose the node, and whom only HTTP routes and the CLI may import.
COMPOSERS = ("gateway.node", "gateway.app", "gateway.server")
ROUTES = ("gateway.admin", "gateway.endpoints", "gateway.mesh.api")
ROUTES += ("gateway.records.api", "gateway.jobs.routes", "gateway.cli")
# What each wing's parts (not its routes) may import of the rest of gateway/, as its
# __init__ docstring says; a wing always imports itself.
WING_ALLOWS = {
    "gateway.mesh": ("gateway.errors", "gateway.metrics"),
    "gateway.records": ("gateway.errors", "gateway.mesh.peers"),
    "gateway.jobs": (
        "gateway.errors",
        "gateway.metrics",
        "gateway.invoke",
        "gateway.records.buffer",
    ),
}
ROUTES_ALSO = ("gateway.endpoints", "gateway.contract", "gateway.auth")


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(importer: str, target: str) -> Iterator[str]:
    for source, forbidden, why in FORBIDDEN:
        inside = within(importer, forbidden)
        if within(importer, source) and within(target, forbidden) and not inside:
            yield f"{importer} imports {target}: {why}"
    may_compose = any(within(importer, r) for r in (*COMPOSERS, *ROUTES))
    if target in (*COMPOSERS, "gateway.endpoints") and not may_compose:
        yield f"{importer} imports {target}: parts receive what they use, not their composer"
    for wing, allowed in WING_ALLOWS.items():
        if not within(importer, wing) or within(target, wing) or not within(target, "gateway"):
            continue
        extra = ROUTES_ALSO if importer in ROUTES else ()
        if not any(within(target, a) for a in (*allowed, *extra)):
            yield f"{importer} imports {target}: {wing} may import only {', '.join(allowed)}"


def test_the_rules_catch_a_planted_import() -> None:
    assert list(violations("gateway.mesh.router", "gateway.node"))
    assert list(violations("gateway.invoke", "gateway.cli.client"))
    assert list(violations("runtime.pool", "gateway.metrics"))
    assert list(violations("gateway.jobs.accept", "gateway.endpoints"))
    assert list(violations("gateway.mesh.router", "gateway.records.buffer"))
    assert list(violations("gateway.mesh.peers", "gateway.jobs.store"))
    assert list(violations("gateway.records.recorder", "gateway.invoke"))
    assert list(violations("gateway.mesh.peers", "gateway.settings"))
    assert not list(violations("gateway.admin", "gateway.node"))
    assert list(violations("gateway.mesh.api", "gateway.node"))  # through endpoints only
    assert not list(violations("gateway.mesh.api", "gateway.endpoints"))
    assert not list(violations("gateway.mesh.router", "gateway.mesh.peers"))
    assert not list(violations("gateway.jobs.service", "gateway.records.buffer"))


def test_wings_import_only_what_their_docstring_allows() -> None:
    problems = [
        problem
        for importer, targets in sorted(import_graph().items())
        for target in sorted(targets)
        for problem in violations(importer, target)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "package",
    sorted(name for name, path in modules().items() if path.name == "__init__.py"),
)
def test_every_package_says_what_it_holds(package: str) -> None:
    doc = ast.get_docstring(ast.parse(modules()[package].read_text()))
    assert doc and len(doc.split()) >= 12, f"{package}/__init__.py needs a docstring"
