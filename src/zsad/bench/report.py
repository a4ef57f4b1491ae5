"""What every bench shares: the device it runs on, progress lines and bench.json + bench.md."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from zsad.bench.measure import load_average
from zsad.formats.atomic import write_json


def say(line: str) -> None:
    """One progress line on stdout."""
    print(line, flush=True)


def warn(line: str) -> None:
    """One line on stderr."""
    print(line, file=sys.stderr, flush=True)


def cuda_available() -> bool:
    """Whether torch is installed and sees a CUDA device."""
    try:
        from zsad.model.cuda import cuda_available as torch_sees_cuda  # torch, if installed
    except ImportError:
        return False
    return torch_sees_cuda()


def resolve_device(device: str) -> str:
    """``auto`` as cuda or cpu; any other device name as given."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


def write_report(
    out: Path,
    command: str,
    env: dict[str, Any],
    config: dict[str, Any],
    body: dict[str, Any],
    md: str,
    plots: list[Path],
) -> dict[str, Any]:
    """Write OUT/bench.json and OUT/bench.md (linking the plots); returns the JSON payload."""
    names = [p.name for p in plots]
    env = {**env, "load_average_at_end": load_average()}
    payload = {"command": command, "environment": env, "config": config, **body, "plots": names}
    write_json(out / "bench.json", payload)
    out.mkdir(parents=True, exist_ok=True)
    links = "".join(f"\n![{Path(n).stem}]({n})\n" for n in names)
    (out / "bench.md").write_text(markdown_header(command, env) + md + links)
    return payload


def markdown_header(command: str, env: dict[str, Any]) -> str:
    """The title and device line that open every bench.md."""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    return (
        f"# zsad bench {command}\n\nDevice: {env.get('gpu', env['processor'])} "
        f"({env['cpu_count']} CPU cores); {versions}\n\n"
        f"CPU instruction set (from /proc/cpuinfo): {env.get('instruction_set', 'not read')}\n\n"
        f"Load average (1/5/15 min) at the start: {env.get('load_average')}, at the end: "
        f"{env.get('load_average_at_end')}\n\n"
    )
