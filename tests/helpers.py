"""Helpers the tests share: the CLI in a fresh interpreter (optionally with torch blocked) and the
one-line error check."""

from __future__ import annotations

import subprocess
import sys
import textwrap

BUNDLE_SIZE = 56  # the session bundle's image size (conftest.bundle)
ENV = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1"}
TORCH = ("torch", "open_clip", "torchvision")
BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    """
)


def zsad(*args: str, block: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter where importing the ``block`` packages fails."""
    prefix = f"BLOCKED = {set(block)!r}\n{BLOCKER}" if block else ""
    script = prefix + "import sys\nfrom zsad.cli.app import main\nsys.argv[0] = 'zsad'\nmain()\n"
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zsad: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
