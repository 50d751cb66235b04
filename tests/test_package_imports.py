"""The packages import each other in one direction: no module imports itself back, and the database package
imports nothing of the packages built on it. Read from the source (top-level imports, those for type checking
included), so it holds for any order in which modules are first imported."""

import ast
from pathlib import Path

from support import REPO

PACKAGE = Path(REPO) / "todo_api"
# What todo_api.db may import of ours: itself, and the modules below every package.
DB_MAY_IMPORT = ("todo_api.db", "todo_api.timezones", "todo_api.config")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level(statements):
    """The statements run when a module is imported, those under `if` and `try` (TYPE_CHECKING's) included;
    not the bodies of its functions and classes."""
    for node in statements:
        yield node
        if isinstance(node, ast.If | ast.Try):
            yield from module_level(node.body + node.orelse + getattr(node, "finalbody", []))


def module_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of ours that `path` imports at its top level (not those its functions import when called)."""
    imported = set()
    for node in module_level(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from package import module` needs the module; `from module import name`, it
                submodule = f"{node.module}.{alias.name}"
                imported.add(submodule if submodule in modules else node.module)
    return {name for name in imported if name in modules}


def import_graph() -> dict[str, set[str]]:
    paths = [path for path in PACKAGE.rglob("*.py") if "migrations" not in path.parts]
    modules = {module_name(path) for path in paths}
    return {module_name(path): module_level_imports(path, modules) for path in paths}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle, once, as the path of modules that closes it."""
    found, done = [], set()

    def visit(module, path):
        if module in path:
            found.append(path[path.index(module) :] + [module])
            return
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return found


def test_the_graph_is_read():
    graph = import_graph()
    assert "todo_api.db.connections" in graph["todo_api.tasks.store"]
    assert "todo_api.auth.sessions" in graph["todo_api.tasks.routes"]


def test_no_module_imports_itself_back():
    assert cycles(import_graph()) == []


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_database_package_imports_nothing_built_on_it():
    graph = import_graph()
    beyond = {
        (module, imported)
        for module, imports in graph.items()
        if module.startswith("todo_api.db")
        for imported in imports
        if not imported.startswith(DB_MAY_IMPORT)
    }
    assert beyond == set()


def test_there_is_no_grab_bag_of_app_state():
    assert not (PACKAGE / "state.py").exists()
