"""The modules of src/unitask import one another without a cycle, read as `unitask.codedeps` reads
them for dvc.yaml: every import statement, those inside functions and under TYPE_CHECKING too."""

from __future__ import annotations

from conftest import REPO
from unitask.codedeps import imported_by

PACKAGE = REPO / "src" / "unitask"


def modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each group of modules that import one another (directly or round a loop), as Tarjan's strongly
    connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_of_unitask_takes_part_in_an_import_cycle() -> None:
    graph = {name: set(imported_by(name)) - {name} for name in modules()}
    assert len(graph) > 80 and graph["unitask.cli"], "codedeps found no modules or imports"
    assert cycles(graph) == []


def test_a_planted_cycle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]


LONGEST = 60  # lines of one function, its docstring and signature included


def long_functions(source: str, limit: int = LONGEST) -> list[tuple[str, int]]:
    """(name, lines) of each function in `source` longer than `limit` lines; nested ones count in theirs."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            if lines > limit:
                found.append((node.name, lines))
    return found


def test_no_function_in_src_is_longer_than_a_screen() -> None:
    """Declaration tables (STAGES, the schema) are module-level data, not functions."""
    found = {f"{p.relative_to(PACKAGE)}:{name}": n for p in PACKAGE.rglob("*.py") for name, n in long_functions(p.read_text())}
    assert found == {}


def test_a_planted_long_function_is_found() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(LONGEST))
    assert long_functions(f"def short():\n    return 1\n\n\ndef long():\n{body}\n") == [("long", LONGEST + 1)]
