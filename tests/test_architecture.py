"""The package's layering, read from the source: imports only point down the data flow, and the
command line stays a thin layer of declarations."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "zsad"
# Lower rank = closer to the leaves; a module may import its own layer or a lower one only.
RANKS = {
    "errors": 0,
    "formats": 0,
    "data": 1,
    "scoring": 1,
    "runtime": 2,
    "model": 3,
    "calibration": 4,
    "export": 4,
    "api": 5,
    "evaluation": 6,
    "station": 6,
    "bench": 7,
    "cli": 8,
    "__main__": 9,
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every zsad module ``path`` imports (at any depth, lazy imports included), with its line."""
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
    return [(name, line) for name, line in found if name.split(".")[0] == "zsad"]


def _modules() -> dict[str, Path]:
    return {
        "zsad."
        + ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }


def test_every_package_has_a_rank() -> None:
    layers = {_layer(m) for m in _modules()} - {"__init__"}
    assert layers <= set(RANKS), sorted(layers - set(RANKS))


def test_imports_only_point_down_the_layers() -> None:
    modules = _modules()
    upward = []
    for module, path in modules.items():
        layer = _layer(module)
        if layer == "__init__":
            continue  # the top-level package re-exports the API lazily
        for name, line in _imports(path):
            target = _layer(name)
            if target in RANKS and RANKS[target] > RANKS[layer]:
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {name}")
    assert not upward, "\n".join(upward)


def test_formats_is_a_leaf() -> None:
    for module, path in _modules().items():
        if _layer(module) == "formats":
            for name, line in _imports(path):
                assert _layer(name) in ("formats", "errors"), f"{path}:{line} imports {name}"


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


def test_the_command_line_starts_without_heavy_imports() -> None:
    import subprocess
    import sys

    heavy = ("torch", "open_clip", "sklearn", "scipy", "onnxruntime", "tensorrt_rtx", "tqdm")
    code = (
        "import sys\nfrom zsad.cli.app import main\nsys.argv = ['zsad', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "Usage: zsad" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr
