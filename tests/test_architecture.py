"""The package's layering, read from the source: imports only point down the data flow, and the
command line stays a thin layer of declarations."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "zsad"
# The layers, leaves first; a module imports its own layer or a lower one only.
RANKS = {
    "errors": 0,
    "arrays": 0,
    "formats": 0,
    "data": 1,
    "scoring": 1,
    "runtime": 1,
    "model": 2,
    "calibration": 2,
    "export": 2,
    "api": 3,
    "evaluation": 4,
    "station": 4,
    "bench": 4,
    "cli": 5,
    "__main__": 6,
}
# Same rank, and still independent of each other: pure NumPy/CuPy, image I/O, backends.
SIBLINGS = frozenset({"data", "scoring", "runtime"})
TORCH = ("torch", "open_clip")
TORCH_LAYERS = frozenset({"model", "calibration", "export"})  # the only importers of TORCH
TORCH_RANK = RANKS["model"]  # the layers that may need PyTorch start here
Graph = dict[str, list[tuple[str, int]]]


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, everything: bool = False) -> list[tuple[str, int]]:
    """Every module ``path`` imports (at any depth, lazy imports included), with its line: zsad's
    own, or with ``everything`` all of them."""
    module = "zsad." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((name, node.lineno))
            found += [(f"{name}.{alias.name}", node.lineno) for alias in node.names]
    return [(n, line) for n, line in found if everything or n.split(".")[0] == "zsad"]


def _modules() -> dict[str, Path]:
    return {
        "zsad."
        + ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }


def _graph(everything: bool = False) -> Graph:
    return {module: _imports(path, everything) for module, path in _modules().items()}


def layering_violations(graph: Graph) -> list[str]:
    """Imports that point up the layers, sideways between siblings, or into another package's
    private module."""
    found = []
    for module, imports in graph.items():
        layer = _layer(module)
        if layer == "__init__":
            continue  # the top-level package re-exports the API lazily
        for name, line in imports:
            target = _layer(name)
            if target not in RANKS or target == layer:
                continue
            if RANKS[target] > RANKS[layer]:
                found.append(f"{module}:{line} imports {name} (up)")
            elif layer in SIBLINGS and target in SIBLINGS:
                found.append(f"{module}:{line} imports {name} (sideways)")
            private = [part for part in name.split(".")[2:] if part.startswith("_")]
            if private and f"zsad.{target}.{private[0]}" in graph:
                found.append(f"{module}:{line} imports {name} (private)")
    return found


def torch_reached(graph: Graph) -> list[str]:
    """Modules below the torch layers that import torch or open_clip, directly or through any
    zsad module they import (lazy imports included)."""
    reached = []
    for module in graph:
        if RANKS.get(_layer(module), TORCH_RANK) >= TORCH_RANK:
            continue
        seen, todo = {module}, [module]
        while todo:
            current = todo.pop()
            for name, line in graph.get(current, []):
                if name.split(".")[0] in TORCH:
                    reached.append(f"{module} -> {current}:{line} imports {name}")
                for candidate in (name, name.rsplit(".", 1)[0]):
                    if candidate in graph and candidate not in seen:
                        seen.add(candidate)
                        todo.append(candidate)
    return reached


def torch_importers(graph: Graph) -> list[str]:
    """Imports of torch or open_clip (lazy ones included) in modules outside the torch layers;
    those reach PyTorch through a function of the torch layers instead."""
    return [
        f"{module}:{line} imports {name}"
        for module, imports in graph.items()
        if _layer(module) not in TORCH_LAYERS
        for name, line in imports
        if name.split(".")[0] in TORCH
    ]


def test_every_package_has_a_rank() -> None:
    layers = {_layer(m) for m in _modules()} - {"__init__"}
    assert layers <= set(RANKS), sorted(layers - set(RANKS))


def test_imports_only_point_down_the_layers() -> None:
    violations = layering_violations(_graph())
    assert not violations, "\n".join(violations)


def test_a_planted_upward_sideways_or_private_import_is_caught() -> None:
    graph = _graph()
    for module, planted in (
        ("zsad.scoring.maps", "zsad.api.detector"),
        ("zsad.runtime.encode", "zsad.data.images"),
        ("zsad.station.station", "zsad.station.line._private"),  # same package: allowed
        ("zsad.api.stream", "zsad.scoring._kernels"),
    ):
        if planted.endswith("_kernels"):
            graph[planted] = []
        found = layering_violations({**graph, module: [*graph[module], (planted, 1)]})
        expected = [] if "line._private" in planted else [f"{module}:1 imports {planted}"]
        assert [v.rsplit(" (", 1)[0] for v in found] == expected, (module, planted, found)


def test_formats_is_a_leaf() -> None:
    for module, path in _modules().items():
        if _layer(module) == "formats":
            for name, line in _imports(path):
                assert _layer(name) in ("formats", "errors"), f"{path}:{line} imports {name}"


def test_the_layers_below_the_models_never_reach_torch() -> None:
    graph = _graph(everything=True)
    assert not torch_reached(graph), "\n".join(torch_reached(graph))
    # A lazy torch import planted two modules down is found through the graph.
    planted = {**graph, "zsad.arrays": [*graph["zsad.arrays"], ("torch.cuda", 9)]}
    assert any(r.startswith("zsad.scoring.msm -> zsad.arrays:9") for r in torch_reached(planted))


def test_only_the_torch_layers_import_torch() -> None:
    graph = _graph(everything=True)
    assert not torch_importers(graph), "\n".join(torch_importers(graph))
    # A lazy import planted in the API or a bench is found; the torch layers may import it.
    for module, planted in (
        ("zsad.api.encoders", "torch"),
        ("zsad.bench.measure", "open_clip"),
        ("zsad.model.cuda", "torch.cuda"),
    ):
        found = torch_importers({**graph, module: [*graph[module], (planted, 7)]})
        expected = [] if module == "zsad.model.cuda" else [f"{module}:7 imports {planted}"]
        assert found == expected, (module, found)


def test_no_import_cycles_between_modules() -> None:
    modules = _modules()
    graph = {
        module: {n for n, _ in _imports(path) if n in modules and n != module}
        for module, path in modules.items()
    }
    # Depth-first search; a back edge is a cycle.
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def _lines(paths: list[Path]) -> int:
    return sum(len(p.read_text().splitlines()) for p in paths)


def test_the_command_line_is_a_thin_layer() -> None:
    everything = list(PACKAGE.rglob("*.py"))
    cli = list((PACKAGE / "cli").rglob("*.py"))
    assert _lines(cli) < 0.15 * _lines(everything), (_lines(cli), _lines(everything))
    long = []
    for path in cli:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


@pytest.mark.slow
def test_the_command_line_starts_without_heavy_imports() -> None:
    import subprocess
    import sys

    heavy = (
        "torch", "open_clip", "sklearn", "scipy", "onnxruntime", "tensorrt_rtx", "tqdm", "ray",
        "pyarrow",
    )  # fmt: skip
    code = (
        "import sys\nfrom zsad.cli.app import main\nsys.argv = ['zsad', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "Usage: zsad" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr
