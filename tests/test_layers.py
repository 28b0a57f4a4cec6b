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
