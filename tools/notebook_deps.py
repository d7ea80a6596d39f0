"""Print Make rules tying each executed notebook to the library modules it imports.

A developer tool, not part of the library: run by the Makefile with the system Python
(standard library only), before the virtual environment exists. Imports are followed
transitively, so touching a module re-executes exactly the
notebooks that import it directly or through another module, and nothing else.
"""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
LIB = ROOT / "lib" / "microqa"
PACKAGE = "microqa"


def module_file(name: str) -> Path | None:
    """lib/microqa/... file of a dotted module name, or None when it is not one of ours."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = LIB.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(path: Path) -> str:
    rel = path.relative_to(LIB.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    else:
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, package: str = "") -> set[str]:
    """Dotted names of the microqa modules (and their parent packages) a source imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names.add(stem)
            names.update(f"{stem}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            prefix = ".".join(parts[:i])
            if module_file(prefix):
                found.add(prefix)
    return found


def closure(start: set[str]) -> set[Path]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        todo.extend(imported_modules(path.read_text(encoding="utf-8"), _package_of(path)))
    return {module_file(name) for name in seen}


def notebook_source(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = []
    for cell in cells:
        if cell["cell_type"] == "code":
            text = "".join(cell["source"])
            # IPython magics and shell escapes are not Python
            lines = text.splitlines()
            code.append("\n".join(ln for ln in lines if not ln.lstrip().startswith(("%", "!"))))
    return "\n".join(code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--notebooks", default=str(ROOT / "notebooks"))
    parser.add_argument("--out-dir", default="build/notebooks")
    args = parser.parse_args()
    root = ROOT
    for notebook in sorted(Path(args.notebooks).glob("*.ipynb")):
        files = closure(imported_modules(notebook_source(notebook)))
        deps = " ".join(sorted(str(f.relative_to(root)) for f in files))
        print(f"{args.out_dir}/{notebook.name}: {deps}")


if __name__ == "__main__":
    main()
