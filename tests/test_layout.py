"""The package's layers, checked on its import graph (parsed with ``ast``, nothing imported).

Data flows one way: the solver knows nothing about modules, topology nothing about statistics,
and only the callback knows about the Trainer. A module may import from its own subpackage and
from the layers below it, never from a layer above (that is how cycles between subpackages
start). The models and data modules stand beside the stack; ``cli`` and the top-level facades
(``__init__``, the compatibility paths) stand above everything and nothing inside imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lightning_grow"

#: The stack, lowest first: each subpackage may import only from itself and those before it.
LAYERS = (
    "solver",  # the TINY math on moments: torch only
    "layers",  # what the package knows about each layer type (the handler registry)
    "topology",  # growable pairs of a plain nn.Module (torch.fx)
    "statistics",  # hooks and moment sums
    "surgery",  # widening, optimizer state, checkpoints
    "reporting",  # growth events and where they are logged
    "decision",  # schedule, selection, amplitude search, statistics budget
    "callback",  # the Lightning integration
)
#: Beside the stack: they may use the layers up to surgery (checkpoint resizing), no higher.
SIDE = {"models": "surgery", "data": "solver"}
#: Above everything: the command line and the top-level facades.
TOP = {"cli", "__init__", "__main__", "checkpoint", "plot", "progress"}
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    """``"callback.growth"``-style names (relative to the package) → file."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imported(name: str, path: Path) -> set[str]:
    """Package-relative names of every ``lightning_grow`` module that ``path`` imports.

    Imports inside functions and ``TYPE_CHECKING`` blocks count too: a lazy import is still a
    dependency.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(
                    ["lightning_grow", *base, *([node.module] if node.module else [])]
                )
            else:
                module = node.module or ""
            # `from lightning_grow.topology import _hidden_ops` imports a module too.
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "lightning_grow" or target.startswith("lightning_grow."):
                found.add(target.removeprefix("lightning_grow").removeprefix("."))
    modules = _modules()
    return {target for target in found if target in modules or target == ""}


def _group(module: str) -> str:
    """The subpackage (or top-level module) a package-relative module name belongs to."""
    return module.split(".")[0] if module else "__init__"


def _rank(group: str) -> float:
    if group in LAYERS:
        return LAYERS.index(group)
    if group in SIDE:
        return LAYERS.index(SIDE[group]) + 0.5
    return float("inf")


def _group_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in _modules().items():
        source = _group(name)
        for target in _imported(name, path):
            if _group(target) != source:
                graph.setdefault(source, set()).add(_group(target))
    return graph


def test_every_module_belongs_to_a_known_place() -> None:
    known = set(LAYERS) | set(SIDE) | TOP
    unknown = sorted({_group(name) for name in _modules()} - known)
    assert not unknown, f"add {unknown} to the layers of tests/test_layout.py"


def test_no_import_from_a_higher_layer() -> None:
    upward = []
    for name, path in _modules().items():
        source = _group(name)
        for target in sorted(_imported(name, path)):
            destination = _group(target)
            if destination == source or source in TOP:
                continue
            if destination in TOP:
                upward.append(f"{name} imports the facade lightning_grow.{target}".rstrip("."))
            elif _rank(destination) > _rank(source):
                upward.append(f"{name} ({source}) imports {target} ({destination})")
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_no_import_cycle_between_subpackages() -> None:
    graph = _group_graph()
    visiting: list[str] = []
    done: set[str] = set()

    def visit(group: str) -> None:
        if group in visiting:
            cycle = [*visiting[visiting.index(group) :], group]
            pytest.fail("import cycle: " + " → ".join(cycle))
        if group in done:
            return
        visiting.append(group)
        for target in sorted(graph.get(group, ())):
            visit(target)
        visiting.pop()
        done.add(group)

    for group in sorted(graph):
        visit(group)


def test_the_solver_knows_nothing_about_modules_or_lightning() -> None:
    for name, path in _modules().items():
        if _group(name) != "solver":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("lightning."), f"{name} imports Lightning"
                assert "nn" not in [alias.name for alias in node.names], f"{name} imports nn"


def test_every_file_stays_readable() -> None:
    long = {
        name: lines
        for name, path in _modules().items()
        if (lines := len(path.read_text().splitlines())) >= MAX_LINES
    }
    assert not long, f"files of {MAX_LINES} lines or more: {long}"


def test_the_graph_is_read() -> None:
    """Guards the guard: the parser finds the imports it is meant to judge."""
    graph = _group_graph()
    assert "solver" in graph["decision"] and "topology" in graph["callback"]
