"""The architecture, checked on every import statement (function-level ones included): no module imports, directly
or in a circle, one of a layer above its own.

Layers, lowest first: amf/ (the container's runtime) < training's base modules (config, data, splits, the run
folder, metrics, augment, the folder ownership rule) < results (pooling, thresholds, comparison) < train/ (fitting) <
the re-prediction under test-time augmentation (results/tta_oof.py, which runs the fitted models) < export/ < card/
< the cluster's tasks (cluster.py, which runs train/) < the commands that drive them all (pipeline, ablate, inspect
and the two names the shipped card gives) < evaluation/ (torch-free, beside training) < bench/."""

from __future__ import annotations

import ast

import pytest
from conftest import ROOT

LAYERS = [
    ("amf",),
    tuple(f"training.{m}" for m in ("domains", "metrics", "augment", "config", "data", "splits", "rundir", "ownership"))
    + ("training",),
    (
        "training.results.oof",
        "training.results.threshold",
        "training.results.compare",
        "training.results.ablation",
        "training.results",
    ),
    ("training.train",),
    ("training.results.tta_oof",),
    ("training.export",),
    ("training.card",),
    ("training.cluster",),
    ("training.pipeline", "training.ablate", "training.inspect", "training.threshold", "training.tta_oof"),
    ("evaluation",),
    ("bench",),
]


def layer(module: str) -> int:
    """The layer of MODULE: its longest listed prefix."""
    best = max(
        ((len(p), i) for i, names in enumerate(LAYERS) for p in names if module == p or module.startswith(p + ".")),
        default=None,
    )
    if best is None:
        raise AssertionError(f"{module} is in no layer of test_layers.LAYERS")
    return best[1]


def imports() -> dict[str, set[str]]:
    """Every project module and the project modules it imports (any import statement, anywhere in it)."""
    files = {}
    for top in ("amf", "training", "evaluation", "bench"):
        for path in (ROOT / top).rglob("*.py"):
            if ".cache" not in path.parts:
                parts = list(path.relative_to(ROOT).with_suffix("").parts)
                files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {resolve(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found |= {resolve(f"{node.module}.{a.name}") or resolve(node.module) for a in node.names}
        graph[module] = found - {None, module}
    return graph


GRAPH = imports()


def test_every_module_has_a_layer_and_imports_none_above_its_own():
    upward = [
        f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
        for m, deps in sorted(GRAPH.items())
        for d in sorted(deps)
        if layer(d) > layer(m)
    ]
    assert not upward, upward


def test_no_import_circle():
    """Tarjan's strongly connected components of the import graph: each must be one module."""
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on.discard(component[-1])
            if len(component) > 1:
                circles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not circles, circles


@pytest.mark.parametrize("edge", [("training.results.oof", "training.train.kfold"), ("amf.ensemble", "training.data")])
def test_the_check_sees_an_upward_import(edge):
    """The rule is not vacuous: an import from a lower layer up is one the first test names."""
    low, high = edge
    assert layer(high) > layer(low)
