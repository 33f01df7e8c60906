"""The import graph points one way: lower stages never import the ones built on them.

Every `import` in every module counts, the ones inside functions included (a lazy import
hides a cycle from Python, not from the design): the graph is read from the source with
`ast`, nothing is imported.
"""

from __future__ import annotations

import ast
import sys
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
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules}
            # `from microfer.datasets import casme2` imports the submodule casme2; the
            # package itself counts only when a name comes from its __init__
            out.update(subs)
            if len(subs) < len(node.names):
                out.add(target)
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
    assert {
        "microfer.clip.apex",
        "microfer.clip.prepare",
        "microfer.datasets._coding",
        "microfer.learn.pretrain",
    } <= set(modules)
    g = {name: _imports(name, path, modules) for name, path in modules.items()}
    # the parser sees both kinds of import, lazy ones included
    assert "microfer.clip.apex" in g["microfer.clip.one_clip"]
    assert (
        "microfer.datasets.casme2" in g["microfer.datasets.registry"]
    )  # `from pkg import submodule`
    assert "microfer.datasets._coding" in g["microfer.datasets.casme2"]
    assert "microfer.clip.landmarks" in g["microfer.clip.prepare"]  # imported inside a function


# The wings in the order of the data flow: a module imports the ground and the wings
# before its own, never one after it (the package root `microfer` is a facade above all)
WINGS = (
    "ground",
    "datasets",
    "clip",
    "synth",
    "models",
    "learn",
    "recognise",
    "spotting",
    "bench",
    "cli",
)


def _wing(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "facade"
    if parts[1] == "__main__":
        return "cli"
    return parts[1] if parts[1] in WINGS else "ground"


def test_every_module_belongs_to_a_known_place():
    ground = sorted(m for m in _modules() if _wing(m) == "ground")
    assert ground == [
        "microfer.errors",
        "microfer.io",
        "microfer.metrics",
        "microfer.parallel",
        "microfer.records",
    ]


def test_no_import_runs_up_the_flow(graph):
    upward = [
        (a, b)
        for a, deps in graph.items()
        for b in deps
        if "facade" not in (_wing(a), _wing(b)) and WINGS.index(_wing(b)) > WINGS.index(_wing(a))
    ]
    assert not upward, upward


def test_only_the_cli_uses_the_facade_or_bench(graph):
    wrong = [
        (a, b)
        for a, deps in graph.items()
        for b in deps
        if (_wing(b) == "facade" or _wing(b) == "bench")
        and _wing(a) not in ("cli", "bench", "facade")
    ]
    assert not wrong, wrong


def test_clip_stays_below_learning_and_its_uses(graph):
    clip = [m for m in graph if _wing(m) == "clip"]
    assert "microfer.clip.prepare" in clip
    for m in clip:
        reached = {_wing(r) for r in _reaches(graph, m)}
        assert not reached & {
            "learn",
            "recognise",
            "spotting",
            "bench",
            "cli",
            "synth",
            "models",
        }, (m, reached)


def test_no_cycles(graph):
    """No module reaches itself through imports (package __init__ files included)."""
    loops = [m for m in graph if m in _reaches(graph, m)]
    assert not loops, loops


def test_apex_does_not_import_prepare(graph):
    """prepare uses apex to spot; the spotting benchmark, which runs prepare, is bench_spot."""
    assert "microfer.clip.prepare" not in _reaches(graph, "microfer.clip.apex"), graph[
        "microfer.clip.apex"
    ]
    assert "microfer.clip.apex" in _reaches(graph, "microfer.clip.prepare")


def test_coding_does_not_import_the_adapters(graph):
    """The dataset adapters import _coding's shared rules; never the other way round.

    _coding reads raw sheets through _sheets: the shared (underscore) modules are not adapters."""
    shared = {"microfer.datasets._coding", "microfer.datasets._sheets"}
    adapters = {m for m in graph if m.startswith("microfer.datasets.") and m not in shared}
    assert {
        "microfer.datasets.casme2",
        "microfer.datasets.samm",
        "microfer.datasets.smic",
    } <= adapters
    assert shared <= set(graph)
    for module in shared:
        reached = _reaches(graph, module)
        assert not reached & (adapters | {"microfer.datasets"}), (
            module,
            sorted(reached & adapters),
        )


def test_models_do_not_import_evaluate(graph):
    """models/ is the zoo only: training code (pretrain, macro data) lives in learn/."""
    models = [m for m in graph if m == "microfer.models" or m.startswith("microfer.models.")]
    assert "microfer.models.mobilevit" in models and "microfer.learn.pretrain" not in models
    for m in models:
        assert "microfer.learn.evaluate" not in _reaches(graph, m), m


def test_old_flat_paths_still_import_with_a_warning():
    import importlib
    import sys

    import microfer

    for old, new in (
        ("video", "clip.video"),
        ("evaluate", "learn.evaluate"),
        ("models.pretrain", "learn.pretrain"),
    ):
        sys.modules.pop(f"microfer.{old}", None)
        with pytest.warns(DeprecationWarning, match=f"microfer.{old} moved to microfer.{new}"):
            module = importlib.import_module(f"microfer.{old}")
        assert module is importlib.import_module(f"microfer.{new}")
        assert module.__spec__.name == f"microfer.{new}"  # the real module keeps its own spec
    with pytest.warns(DeprecationWarning):
        assert microfer.cache is importlib.import_module("microfer.clip.cache")
    assert callable(microfer.predict)  # the top-level API is no deprecated path


def test_moved_table_names_real_modules():
    import microfer

    for new in microfer.MOVED.values():
        assert f"microfer.{new}" in _modules(), new


def test_no_private_name_is_imported_across_modules():
    """A name with a leading underscore belongs to its module; what others need is public."""
    crossing = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("microfer"):
                crossing += [
                    f"{name} imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not crossing, crossing


# Imports stay at the top of a module, except those that keep `microfer --help`, `import
# microfer` and predict light: a function may import a package of this list (or a microfer
# module that imports one at its top, which this module does not), or a module that would
# import this one back while it is still loading. The one list, with the reasons:
LAZY_PACKAGES = {
    "torch": "2 s and 400 MB to import; predict runs the network in onnxruntime without it",
    "timm": "imports torch",
    "torchvision": "imports torch",
    "onnx": "only train exports ONNX",
    "onnxruntime": "only predict runs ONNX",
    "cv2": "OpenCV: 0.3 s; datasets, protocols and reports need none of it",
    "dlib": "the face detector and landmark model: only clips with faces need it",
    "decord": "the video reader: only videos need it",
    "sklearn": "0.5 s; only learning and bundles need it",
    "scipy": "only a few numeric steps need it",
    "pandas": "0.3 s; manifests and reports, not predict",
    "matplotlib": "plots only; the Agg backend must be chosen before pyplot is imported",
    "safetensors": "only weights and bundles need it",
    "joblib": "only parallel runs need it",
    "distributed": "the optional dask extra",
    "dask": "the optional dask extra",
    "tqdm": "progress bars only",
    "yaml": "protocol files only",
    "openpyxl": "Excel coding files only",
    "PIL": "GIF frames only",
    "h5py": "the teacher's Keras file, read once at conversion",
    "uvicorn": "the web server only",
    "starlette": "the web server only",
    "playwright": "the page test only",
}


# modules whose functions import on purpose: each is the whole program of a measured child
# process, whose footprint (start-up time, peak memory) must be its own work's alone
LAZY_MODULES = {
    "microfer.bench.prepare": "the bare dlib + DIS baseline runs in children that import it",
    "microfer.bench.spot_long": "each measuring child's peak memory must be spotting's",
}


def _top_level(name: str, path: Path, modules) -> tuple[set[str], set[str]]:
    """(microfer modules, third-party packages) imported at module level, not in functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    mods, third = set(), set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(node, ast.ClassDef):
                visit(node.body)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for part in (
                    node.body,
                    getattr(node, "orelse", []),
                    getattr(node, "finalbody", []),
                ):
                    visit(part)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    (
                        mods.add(a.name)
                        if a.name.startswith("microfer")
                        else third.add(a.name.split(".")[0])
                    )
            elif isinstance(node, ast.ImportFrom):
                target = _target(node, package)
                if target.startswith("microfer"):
                    mods.add(target)
                    mods.update(
                        f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules
                    )
                else:
                    third.add(target.split(".")[0])

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    parents = {".".join(m.split(".")[:i]) for m in mods for i in range(1, m.count(".") + 1)}
    return {m for m in mods | parents if m in modules}, third


def _target(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")
    return ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))


def test_function_level_imports_are_lazy_for_a_listed_reason():
    modules = _modules()
    tops = {n: _top_level(n, p, modules) for n, p in modules.items()}

    def closure(name):
        seen, heavy, todo = {name}, set(), [name]
        while todo:
            mods, third = tops[todo.pop()]
            heavy |= third
            todo += [m for m in mods if m not in seen]
            seen |= mods
        return seen, heavy

    unexplained = []
    for name, path in modules.items():
        if name in LAZY_MODULES:
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        own_heavy = closure(name)[1]
        for fn in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    target = _target(node, package)
                    subs = [
                        f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules
                    ]
                    targets = subs if len(subs) == len(node.names) else [target]
                else:
                    continue
                for t in targets:
                    if not t.startswith("microfer"):
                        ok = (
                            t.split(".")[0] in LAZY_PACKAGES
                            or t.split(".")[0] in sys.stdlib_module_names
                        )
                    elif t in modules:
                        reach, heavy = closure(t)
                        ok = name in reach or bool((heavy - own_heavy) & set(LAZY_PACKAGES))
                    else:
                        ok = True  # a name from a package __init__
                    if not ok:
                        unexplained.append(f"{name}:{node.lineno} imports {t}")
    assert not unexplained, "\n".join(unexplained)
