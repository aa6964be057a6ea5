"""The layout's rules (docs/development.md), checked on the imports themselves.

Each folder is one part of the architecture and may import only from the layers below it; no
import cycles; the product never imports the lab.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mailcontinuity"

# Lowest first; a part may import its own modules and anything in an earlier layer.
LAYERS: list[set[str]] = [
    {"logsetup"},
    {"config"},
    {"audit"},
    {"mail"},
    {"store", "hooks"},
    {"deploy"},
    {"transitions"},
    {"journal", "monitor", "outage", "sieve", "credentials"},
    {"reports"},
    {"cli"},
    {"lab"},
    {"__main__"},
]


def part_of(module: str) -> str:
    """``mailcontinuity.store.db`` -> ``store``; ``mailcontinuity.config`` -> ``config``."""
    return module.split(".")[1] if module.count(".") else module


def layer_of(part: str) -> int:
    return next(number for number, parts in enumerate(LAYERS) if part in parts)


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        dotted = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[dotted.removesuffix(".__init__")] = path
    return found


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every ``mailcontinuity`` import in ``path``;
    imports under ``if TYPE_CHECKING:`` are not counted (they never run)."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and (child.module or "").startswith(
                    "mailcontinuity"):
                found.append((child.module or "", top))
            elif isinstance(child, ast.Import):
                found.extend((alias.name, top) for alias in child.names
                             if alias.name.startswith("mailcontinuity"))
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, top and not nested)

    visit(tree, True)
    return found


def test_every_part_has_a_layer() -> None:
    parts = {part_of(module) for module in modules()} - {"mailcontinuity"}
    assert parts <= set().union(*LAYERS), parts - set().union(*LAYERS)


def test_parts_import_only_from_below() -> None:
    wrong = []
    for module, path in modules().items():
        if module == "mailcontinuity":
            continue
        mine = part_of(module)
        for imported, _ in imports(path):
            theirs = part_of(imported)
            if theirs != mine and layer_of(theirs) >= layer_of(mine):
                wrong.append(f"{module} imports {imported}")
    assert wrong == []


def test_the_product_never_imports_the_lab() -> None:
    wrong = [f"{module} imports {imported}" for module, path in modules().items()
             if part_of(module) not in ("lab", "__main__")
             for imported, _ in imports(path) if part_of(imported) == "lab"]
    assert wrong == []


def test_no_import_cycles() -> None:
    """Every module can be imported on its own: no cycle among module-level imports."""
    known = modules()
    graph = {module: {imported for imported, top in imports(path) if top and imported in known}
             for module, path in known.items()}
    done: set[str] = set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(module):]
                                                               + [module]))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
