"""The shape of the code: no import cycle among the project's modules (imports inside functions
count), and no function longer than 80 lines (nested functions count toward the one they sit in)."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# folder in the repository -> package name once installed (pyproject.toml's package-dir)
PACKAGES = {"imgprep": "imgprep", "trainer": "imgprep.trainer", "cli": "imgprep.cli"}
MAX_FUNCTION_LINES = 80


def project_modules() -> dict[str, str]:
    """{module name: file path} of every module of the installed packages."""
    mods = {}
    for folder, package in PACKAGES.items():
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if name.endswith(".py"):
                stem = name[:-3]
                mods[package if stem == "__init__" else f"{package}.{stem}"] = os.path.join(ROOT, folder, name)
    return mods


def imported_modules(name: str, path: str, known: set[str]) -> set[str]:
    """Project modules that `name` imports anywhere in its file (top level or inside functions)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            # `from pkg import sub` imports the module pkg.sub where one exists
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import imgprep.trainer.model` reaches the module itself
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n):
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    mods = project_modules()
    graph = {n: imported_modules(n, p, set(mods)) for n, p in mods.items()}
    assert graph["imgprep.cli.data"], "the import graph came out empty: the parser is broken"
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_function_over_80_lines():
    long = []
    for name, path in project_modules().items():
        with open(path) as f:
            tree = ast.parse(f.read())
        outer = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        nested = {id(m) for n in outer for m in ast.walk(n) if m is not n and isinstance(m, type(n))}
        for n in outer:
            lines = n.end_lineno - n.lineno + 1
            if id(n) not in nested and lines > MAX_FUNCTION_LINES:
                long.append(f"{name}.{n.name}: {lines} lines")
    assert not long, long
