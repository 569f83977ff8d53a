"""The code a stage depends on: the `unitask` modules its function imports, found by reading the
import statements of each module (those inside functions too: stages import their heavy parts late),
transitively. `dvc.yaml` lists these files as the stage's deps, so a change to any module a stage
imports reruns exactly the stages that import it."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = "unitask"


ROOT = Path(__file__).resolve().parent  # the unitask package folder


@functools.cache
def _source(module: str) -> Path | None:
    """The file of a unitask module, found without importing anything; None for other modules."""
    head, _, rest = module.partition(".")
    if head != PACKAGE:
        return None
    base = ROOT.joinpath(*rest.split(".")) if rest else ROOT
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _parents(module: str) -> list[str]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@functools.cache
def imported_by(module: str) -> frozenset[str]:
    """The unitask modules one module's own source imports (not transitively)."""
    path = _source(module)
    if path is None:
        return frozenset()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from pkg import name`: name may be a submodule
            found.update(f"{base}.{alias.name}" for alias in node.names if _source(f"{base}.{alias.name}"))
    return frozenset(m for m in found if _source(m))


def imports(module: str) -> list[str]:
    """Every unitask module that importing `module` can run, itself included, sorted."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        for name in (current, *_parents(current)):
            if name not in seen and _source(name):
                seen.add(name)
                todo.extend(imported_by(name))
    return sorted(seen)


def code_files(module: str, root: Path) -> list[str]:
    """The source files of `imports(module)` as DVC deps: under the project's own `src/unitask` when it
    has one (the unitask checkout and copies of it), else the installed package's files."""
    base = f"src/{PACKAGE}" if (root / "src" / PACKAGE).is_dir() else ROOT.as_posix()
    return sorted(f"{base}/{_source(m).relative_to(ROOT).as_posix()}" for m in imports(module))  # type: ignore[union-attr]
