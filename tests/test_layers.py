"""The package's import graph has no cycle, counting imports inside functions too.

A cycle held apart only by an import inside a function (``config -> utils -> trainer -> utils``)
still couples the layers: data flows one way (CLI -> quick_start -> config -> data ->
model/trainer -> llm, rl), and the llm package never imports models.
"""

import ast
from pathlib import Path

import networkx as nx

import recbole_ext

PACKAGE_DIR = Path(recbole_ext.__file__).resolve().parent
PACKAGE = "recbole_ext"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE_DIR.rglob("*.py")}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules ``name`` imports anywhere in its file (functions included), with the
    packages whose ``__init__`` each import runs."""
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets.add(source)
            targets.update(f"{source}.{alias.name}" for alias in node.names)
    found = set()
    for target in targets:
        parts = target.split(".")
        for end in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            prefix = ".".join(parts[:end])
            if prefix in known and prefix != name:
                found.add(prefix)
    return found


def import_graph() -> nx.DiGraph:
    modules = package_modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for target in imported_modules(name, path, set(modules)):
            # a package's __init__ is run by its submodules' imports, not a dependency of theirs
            if not name.startswith(target + "."):
                graph.add_edge(name, target)
    return graph


def test_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert graph.has_edge("recbole_ext.llm.serve", "recbole_ext.llm.client")  # from .client
    assert graph.number_of_edges() > 50


def test_no_import_cycle_in_the_package():
    cycles = sorted(
        sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1
    )
    assert cycles == [], "import cycles (module groups that import each other): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_llm_package_imports_no_model_trainer_or_run_level_code():
    graph = import_graph()
    upward = ("recbole_ext.model", "recbole_ext.trainer", "recbole_ext.quick_start")
    for module in (m for m in graph if m.startswith("recbole_ext.llm")):
        assert not [t for t in graph.successors(module) if t.startswith(upward)], module


def test_data_does_not_import_rl():
    graph = import_graph()
    for module in (m for m in graph if m.startswith("recbole_ext.data")):
        assert not [t for t in graph.successors(module) if t.startswith("recbole_ext.rl")], module
