"""The package's layers point down: a module imports only from its own layer or the ones below it.

errors, image_tensors -> io -> models (with their loaders and inference), losses, faceworld -> device
(the device/precision policy) -> metrics -> training, synthesis -> reporting, params -> pipelines,
hooks, commands, tracking -> settings, pipeline_registry, __main__.

Within a layer, packages may use each other in one direction only (no cycles). Kedro is imported only
by pipelines/, the hooks, the Kedro adapters in io/kedro_datasets.py and the framework entry points;
MLflow only by those and reporting. Imports are read with `ast` - lazy ones inside functions count.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "face_pipelines"

# Lowest first. A unit is a subpackage or a top-level module of face_pipelines.
LAYERS: list[set[str]] = [
    {"errors", "image_tensors", "__init__"},
    {"io"},
    {"models", "losses", "faceworld"},
    {"device"},
    {"metrics"},  # arrays and models in, numbers out: nothing that trains or renders
    {"training", "synthesis"},
    {"reporting", "params"},
    {"pipelines", "hooks", "commands", "tracking"},
    {"settings", "pipeline_registry", "__main__"},
]
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}

KEDRO_USERS = {
    "pipelines",
    "hooks",
    "io.kedro_datasets",
    "settings",
    "pipeline_registry",
    "__main__",
}
MLFLOW_USERS = KEDRO_USERS | {"reporting", "tracking"}


def _modules() -> dict[str, Path]:
    """{dotted name below face_pipelines: file}, e.g. 'io.packed', 'errors', 'pipelines.render.nodes'."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


@functools.cache
def _imports(name: str, path: Path) -> frozenset[str]:
    """Absolute module names `path` imports (relative imports resolved), lazy ones included."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["face_pipelines", *package[: len(package) - node.level + 1]]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            # `from face_pipelines import tracking` imports the submodule
            found.update(
                f"{module}.{alias.name}"
                for alias in node.names
                if module.startswith("face_pipelines")
                and f"{module}.{alias.name}".removeprefix("face_pipelines.") in MODULES
            )
    return frozenset(found)


def _unit(module: str) -> str:
    """The layer unit of a dotted name below face_pipelines: its top-level part."""
    return module.split(".")[0] if module else "__init__"


def _internal(imported: str) -> str | None:
    if imported == "face_pipelines":
        return ""
    if imported.startswith("face_pipelines."):
        return imported.removeprefix("face_pipelines.")
    return None


def _in_scope(name: str, allowed: set[str]) -> bool:
    return any(name == a or name.startswith(a + ".") for a in allowed)


def test_every_unit_has_a_layer():
    units = {_unit(name) for name in MODULES}
    assert units - LAYER_OF.keys() == set(), "place new packages/modules in LAYERS"


def test_imports_point_down():
    upward = []
    for name, path in MODULES.items():
        own = LAYER_OF[_unit(name)]
        for imported in _imports(name, path):
            target = _internal(imported)
            if target is None or not target:
                continue
            if LAYER_OF[_unit(target)] > own:
                upward.append(f"{name} imports {target}")
    assert upward == []


def test_no_import_cycles_between_packages_of_a_layer():
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        for imported in _imports(name, path):
            target = _internal(imported)
            if (
                target
                and _unit(target) != _unit(name)
                and LAYER_OF[_unit(target)] == LAYER_OF[_unit(name)]
            ):
                edges.setdefault(_unit(name), set()).add(_unit(target))
    cycles = [(a, b) for a, targets in edges.items() for b in targets if a in edges.get(b, ())]
    assert cycles == []


def test_no_module_cycles():
    """No two library modules import each other, directly or through others."""
    graph = {
        name: {t for i in _imports(name, path) if (t := _internal(i)) and t in MODULES}
        for name, path in MODULES.items()
        if not name.startswith("pipelines")
    }
    done: set[str] = set()
    stack: list[str] = []

    def visit(node: str) -> None:
        if node in stack:
            pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(node) :], node]))
        if node in done:
            return
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)


@pytest.mark.parametrize(
    ("framework", "allowed"), [("kedro", KEDRO_USERS), ("mlflow", MLFLOW_USERS)]
)
def test_framework_imports_stay_at_the_edges(framework, allowed):
    offenders = sorted(
        name
        for name, path in MODULES.items()
        if not _in_scope(name, allowed)
        and any(
            imported.split(".")[0] in (framework, "kedro_mlflow")
            for imported in _imports(name, path)
        )
    )
    assert offenders == []
