"""The house's layering: each layer imports only from those below it, so the model never depends on
the index, nor the index on a server. Imports inside functions count too: a lazy import is still a
dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import prodsearch

PACKAGE = Path(prodsearch.__file__).parent
# Bottom to top. A module may import from its own layer and the layers below it.
LAYERS = {
    "errors": 0,
    "choices": 0,  # names the CLI offers before anything heavy is imported
    "train_config": 0,  # training settings and defaults, which train --help shows without torch
    "failpoints": 0,  # the crash tests' failure injection, in writes and in training
    "catalog": 1,
    "synthetic": 2,  # renders demo shops; writes them through the catalog
    "retrieval": 3,
    "indexer": 4,
    "eval": 5,
    "demo": 6,
    "serve": 7,
    "cli": 8,
    "__main__": 9,
}


def layer_of(module: str) -> str | None:
    """The layer of ``prodsearch.<layer>...``; None for the package itself and for other packages."""
    parts = module.split(".")
    if parts[0] != "prodsearch" or len(parts) < 2:
        return None
    return parts[1]


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every prodsearch import in a file, wherever it stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, module) for line, module in found if module.startswith("prodsearch")]


def module_name(path: Path) -> str:
    return ".".join(("prodsearch", *path.relative_to(PACKAGE).with_suffix("").parts))


def test_every_top_level_module_has_a_layer():
    names = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").exists()) and p.name != "__init__.py"}
    assert names <= set(LAYERS), f"give these a layer in LAYERS: {sorted(names - set(LAYERS))}"


def test_imports_only_go_down():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = layer_of(module_name(path))
        if own is None:
            continue
        for line, module in imports(path):
            target = layer_of(module)
            if target is not None and LAYERS[target] > LAYERS[own]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {module} ({target})")
    assert not upward, "imports that go up the layers:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    """The walker finds imports inside functions, so a lazy upward import cannot hide."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from prodsearch.cli.app import cli\n")
    assert imports(path) == [(2, "prodsearch.cli.app")]


def module_graph() -> dict[str, set[str]]:
    """Module -> the prodsearch modules it imports (``from pkg import sub`` counts as importing sub)."""
    modules = {module_name(p).removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    """Package __init__ files re-export their modules; apart from that no module imports one that
    imports it back, even lazily (a factory above the builders, as timm's _factory.py)."""
    graph = module_graph()
    packages = {name for name in graph if (PACKAGE.parent / name.replace(".", "/")).is_dir()}
    without_reexports = {name: {t for t in targets if t not in packages} for name, targets in graph.items()}
    assert cycles(without_reexports) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_all_sql_is_in_the_catalog_database_class():
    """Only prodsearch/indexer/catalog_db.py speaks SQL or opens SQLite: one place to read for what
    an index's database holds and how it is written."""
    import re

    speaking = re.compile(r"\.(execute|executemany|executescript|atomic)\(|import sqlite3|import sqlite_utils|sqlite_utils\.")
    offenders = [str(path.relative_to(PACKAGE.parent)) for path in sorted(PACKAGE.rglob("*.py"))
                 if path.name != "catalog_db.py" and speaking.search(path.read_text(encoding="utf-8"))]
    assert offenders == []
