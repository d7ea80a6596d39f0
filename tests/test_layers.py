"""The library reads in the order of the notebooks: each stage package imports only from stages
before it and from the shared floor, never back up, and no two modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import microqa

LIB = Path(microqa.__file__).parent
# The shared floor first, then one package per stage in notebook order; the CLI sits on top.
LAYERS = {
    "metrics": 0,
    "stats": 0,
    "calibration": 0,
    "parallel": 0,
    "config": 0,
    "files": 0,
    "provenance": 0,
    "publishing": 0,
    "hub": 0,
    "drawing": 0,
    "run": 0,
    "data": 1,
    "clip": 2,
    "vlm": 3,
    "compare": 4,
    "report": 5,
    "cli": 6,
    "__main__": 6,
}
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = path.relative_to(LIB).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join(("microqa", *parts))


def _imports(path: Path) -> set[str]:
    """Every microqa module `path` imports (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("microqa")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("microqa"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (LIB / Path(*candidate.split(".")[1:])).with_suffix(".py").exists() or (
                    LIB / Path(*candidate.split(".")[1:])
                ).is_dir()
                found.add(candidate if is_module else node.module)
    return found


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "microqa"
    if top not in LAYERS:
        raise AssertionError(f"{module}: not in a known layer; add its package to LAYERS")
    return LAYERS[top]


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in LIB.rglob("*.py")}


def test_no_module_imports_a_later_stage():
    upward = [
        f"{module} -> {target}"
        for module, targets in _graph().items()
        if module != "microqa"
        for target in targets
        if target != "microqa" and _layer(target) > _layer(module)
    ]
    assert not upward, "imports running back up:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = _graph()
    done: set[str] = set()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node] & graph.keys()):
            if nxt in path:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    for node in sorted(graph):
        visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


def test_no_module_is_over_the_size_limit():
    long = {
        str(p.relative_to(LIB)): n
        for p in LIB.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
