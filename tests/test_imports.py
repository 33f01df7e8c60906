"""The import graph points one way: lower stages never import the ones built on them.

Every `import` in every module counts, the ones inside functions included (a lazy import
hides a cycle from Python, not from the design): the graph is read from the source with
`ast`, nothing is imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "microfer"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """microfer modules that module `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            # `from microfer.datasets import casme2` imports the submodule casme2
            out.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules)
    return {m for m in out if m in modules}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in graph.get(todo.pop(), ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_the_graph_is_read():
    modules = _modules()
    assert {"microfer.clip.apex", "microfer.clip.prepare", "microfer.datasets._coding",
            "microfer.learn.pretrain"} <= set(modules)
    g = {name: _imports(name, path, modules) for name, path in modules.items()}
    # the parser sees both kinds of import, lazy ones included
    assert "microfer.clip.apex" in g["microfer.clip.prepare"]
    assert "microfer.datasets.casme2" in g["microfer.datasets.registry"]  # `from pkg import submodule`
    assert "microfer.datasets._coding" in g["microfer.datasets.casme2"]
    assert "microfer.clip.cache" in g["microfer.clip.prepare"]  # imported inside a function


def test_apex_does_not_import_prepare(graph):
    """prepare uses apex to spot; the spotting benchmark, which runs prepare, is bench_spot."""
    assert "microfer.clip.prepare" not in _reaches(graph, "microfer.clip.apex"), graph["microfer.clip.apex"]
    assert "microfer.clip.apex" in _reaches(graph, "microfer.clip.prepare")


def test_coding_does_not_import_the_adapters(graph):
    """The dataset adapters import _coding's shared rules; never the other way round."""
    adapters = {m for m in graph if m.startswith("microfer.datasets.") and m != "microfer.datasets._coding"}
    assert {"microfer.datasets.casme2", "microfer.datasets.samm", "microfer.datasets.smic"} <= adapters
    reached = _reaches(graph, "microfer.datasets._coding")
    assert not reached & (adapters | {"microfer.datasets"}), sorted(reached & adapters)


def test_models_do_not_import_evaluate(graph):
    """models/ is below the LOSO runner: it opens prepare caches through microfer.clip.cache."""
    models = [m for m in graph if m == "microfer.models" or m.startswith("microfer.models.")]
    assert "microfer.learn.pretrain" in models and "microfer.learn.macro_data" in models
    for m in models:
        assert "microfer.learn.evaluate" not in _reaches(graph, m), m
