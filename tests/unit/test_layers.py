"""The library's import graph has layers, and no .py file grows past 400 lines.

Every module of etc_core has a layer; a module may import (at module level or inside a function) only modules of
its own layer or below. Imports under `if TYPE_CHECKING:` are not run and do not count: that is how a lower
module names EtcConfig as a type. Importing `a.b.c` also runs the packages `a.b` and `a`, so they count too.
A new module needs a line in LAYERS. No modules import each other in a circle either (a package's own modules
and the package itself, which Python runs first, are not a circle).
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 400

NAMES = {0: "foundations", 1: "data and models", 2: "domain and their config sections", 3: "services",
         4: "the aggregate config", 5: "stage drivers and entry points"}

# the most specific entry wins: a module's own name, else its package's
LAYERS = {
    # 0: no etc_core imports but each other: errors, registries, storage, locks, Ray start-up, the config base,
    # optional dependencies
    "etc_core": 0, "etc_core.errors": 0, "etc_core.registry": 0, "etc_core.quiet": 0, "etc_core.locks": 0,
    "etc_core.ray_utils": 0, "etc_core.section": 0, "etc_core.storage": 0, "etc_core.pipeline_config": 0,
    "etc_core.extras": 0,
    # 1: datasets (with the data section, validated against the dataset registry), models, flow warping
    "etc_core.data": 1, "etc_core.models": 1, "etc_core.flow": 1, "etc_core.flow.warp": 1,
    "etc_core.tracking": 1, "etc_core.tracking.config": 1,
    # 2: flow sources and estimators, losses, metrics, training pieces, and the sections that name them
    "etc_core.flow.estimate": 2, "etc_core.flow.dis": 2, "etc_core.flow.sources": 2, "etc_core.flow.work": 2,
    "etc_core.flow.config": 2,
    "etc_core.losses": 2, "etc_core.metrics": 2, "etc_core.tracking.pictures": 2,
    "etc_core.train": 2, "etc_core.train.augment": 2, "etc_core.train.backend": 2, "etc_core.train.checkpoint": 2,
    "etc_core.train.config": 2, "etc_core.sweep": 2, "etc_core.sweep.config": 2,
    # 3: MLflow tracking and registry, inference, evaluation, the model card, the sweep space, flow timing
    "etc_core.tracking.mlflow": 3, "etc_core.tracking.registry": 3, "etc_core.tracking.ui": 3,
    "etc_core.tracking.sweep_runs": 3,
    "etc_core.tracking.copy": 3, "etc_core.infer": 3,
    "etc_core.train.evaluate": 3, "etc_core.train.card": 3, "etc_core.sweep.space": 3, "etc_core.flow.timing": 3,
    # 4: EtcConfig, gathered from the sections below, with load_config and parse_args
    "etc_core.config": 4,
    # 5: what takes the whole config at run time: the stages, the Ray Train worker loop, the pipeline, checks, CLI
    "etc_core.flow.stage": 5, "etc_core.train.loop": 5, "etc_core.train.run": 5, "etc_core.sweep.run": 5,
    "etc_core.sweep.report": 5, "etc_core.pipeline": 5, "etc_core.stages": 5, "etc_core.preflight": 5,
    "etc_core.cluster_check": 5, "etc_core.cli": 5, "etc_core.entry": 5,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((REPO / "etc_core").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def layer_of(module: str) -> int | None:
    """The module's own entry, else its package's (not the root's: a new top-level module needs its own line)."""
    if module in LAYERS:
        return LAYERS[module]
    package = module.rpartition(".")[0]
    while package and package != "etc_core":
        if package in LAYERS:
            return LAYERS[package]
        package = package.rpartition(".")[0]
    return None


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(module: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, etc_core module) of every import that runs: module level and in functions, not under TYPE_CHECKING;
    each with the packages above it."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []

    def add(line: int, target: str) -> None:
        while target.startswith("etc_core"):
            found.append((line, target))
            target = target.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # `from etc_core.flow import work` imports the module etc_core.flow.work
                add(node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return [(line, target) for line, target in found if target != module]


def layer_violations(modules: dict[str, Path], root: Path = REPO) -> list[str]:
    bad = []
    for module, path in modules.items():
        mine = layer_of(module)
        for line, target in imports(module, path, set(modules)):
            theirs = layer_of(target)
            if theirs is not None and mine is not None and theirs > mine:
                bad.append(f"{path.relative_to(root)}:{line}: {module} (layer {mine}, {NAMES[mine]}) imports "
                           f"{target} (layer {theirs}, {NAMES[theirs]})")
    return sorted(set(bad))


def import_circles(modules: dict[str, Path]) -> list[list[str]]:
    """The sets of modules that import each other in a circle (strongly connected, run-time imports), sorted;
    an import of a module's own package (which runs first anyway) is not an edge."""
    known = set(modules)
    graph = {}
    for module, path in modules.items():
        ancestors = {module.rsplit(".", n)[0] for n in range(1, module.count(".") + 1)}
        graph[module] = sorted({t for _, t in imports(module, path, known) if t in known and t not in ancestors})
    order, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        order[node] = low[node] = len(order)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in order:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], order[target])
        if low[node] == order[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return sorted(circles)


def test_no_modules_import_each_other_in_a_circle():
    circles = import_circles(_modules())
    assert not circles, "modules that import each other (move what both need below them):\n" + \
        "\n".join(" <-> ".join(c) for c in circles)


def test_the_circle_check_sees_a_function_level_import_back(tmp_path):
    models = tmp_path / "etc_core" / "models"
    models.mkdir(parents=True)
    (models / "__init__.py").write_text("from etc_core.models import a\n")
    (models / "a.py").write_text("from etc_core.models.b import x\n")
    (models / "b.py").write_text("x = 1\n\ndef f():\n    from etc_core.models import a\n")
    modules = {"etc_core.models": models / "__init__.py", "etc_core.models.a": models / "a.py",
               "etc_core.models.b": models / "b.py"}
    assert import_circles(modules) == [["etc_core.models.a", "etc_core.models.b"]]
    (models / "b.py").write_text("x = 1\n")  # b imports nothing back: the package's import of a is no circle
    assert import_circles(modules) == []


def test_every_module_has_a_layer():
    missing = [m for m in _modules() if layer_of(m) is None]
    assert not missing, f"add to LAYERS in tests/unit/test_layers.py: {', '.join(missing)}"
    stale = [m for m in LAYERS if m not in _modules()]
    assert not stale, f"LAYERS names modules that do not exist: {', '.join(stale)}"


def test_no_import_goes_up_a_layer():
    bad = layer_violations(_modules())
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def test_the_check_sees_function_level_imports_and_skips_type_checking(tmp_path):
    losses = tmp_path / "etc_core" / "losses"
    losses.mkdir(parents=True)
    (losses / "etc.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                   "    from etc_core.config import EtcConfig\n\n"
                                   "def f():\n    import etc_core.pipeline\n")
    bad = layer_violations({"etc_core.losses.etc": losses / "etc.py"}, root=tmp_path)
    assert bad == ["etc_core/losses/etc.py:6: etc_core.losses.etc (layer 2, domain and their config sections) "
                   "imports etc_core.pipeline (layer 5, stage drivers and entry points)"]


def test_no_python_file_over_400_lines():
    long = [f"{path.relative_to(REPO)}: {n} lines"
            for folder in ("etc_core", "pipelines", "benchmarks", "tests")
            for path in sorted((REPO / folder).rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > MAX_LINES]
    assert not long, f"over {MAX_LINES} lines (split by what the code does):\n" + "\n".join(long)
