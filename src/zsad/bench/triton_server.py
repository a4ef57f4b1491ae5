"""A local tritonserver from an nvidia-pytriton environment, for benchmarks and tests on a CPU.

The nvidia-pytriton wheel ships a tritonserver binary with the Python backend only (and pins
numpy<2), so it lives in its own virtual environment; models there run ONNX Runtime inside the
Python backend (``zsad triton --form python``). Binds to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from zsad.errors import ZsadError


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def find_distribution(env: Path) -> tuple[Path, str]:
    """(pytriton's tritonserver folder, the env's Python version) of a pytriton environment."""
    found = sorted(env.glob("lib/python3.*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    if not found:
        raise ZsadError(
            f"{env}: no tritonserver from nvidia-pytriton here (python3 -m venv {env} && "
            f"{env}/bin/pip install nvidia-pytriton onnxruntime)"
        )
    dist = found[-1].parents[1]
    return dist, dist.parents[2].name.removeprefix("python")


class LocalTritonServer:
    """Starts tritonserver on free 127.0.0.1 ports over ``repo``; ``stop`` (or ``with``) ends it.

    ``kill`` and ``start`` again (same ports) stand in for a crash and a restart.
    """

    def __init__(self, env: Path, repo: Path, *, extra_env: dict[str, str] | None = None) -> None:
        self.env, self.repo = Path(env), Path(repo)
        self.dist, version = find_distribution(self.env)
        self.workdir = Path(tempfile.mkdtemp(prefix="zsad-triton-"))
        backend = self.workdir / "backends" / "python"
        shutil.copytree(self.dist / "backends" / "python", backend)
        stub = self.dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        shutil.copy(stub, backend / "triton_python_backend_stub")
        self.http_port, self.grpc_port = _free_port(), _free_port()
        libs = self.dist.parents[1] / "nvidia_pytriton.libs"
        self.environ = {
            **os.environ,
            "LD_LIBRARY_PATH": ":".join(
                filter(None, [str(libs), os.environ.get("LD_LIBRARY_PATH")])
            ),
            # The Python backend's stub runs the models with this environment's python.
            "PATH": f"{self.env / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            **(extra_env or {}),
        }
        self.log = self.workdir / "tritonserver.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        """The gRPC endpoint."""
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """The HTTP endpoint."""
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, wait_s: float = 120.0) -> LocalTritonServer:
        """Start the server and wait until every model is ready."""
        command = [
            str(self.dist / "bin" / "tritonserver"),
            f"--model-repository={self.repo}",
            f"--backend-directory={self.workdir / 'backends'}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--exit-timeout-secs=5",
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.environ
            )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ZsadError(f"tritonserver exited at start-up: {self.tail()}")
            if self.ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise ZsadError(f"tritonserver not ready after {wait_s:g} s: {self.tail()}")

    def ready(self) -> bool:
        """Whether the server answers ready (all models loaded)."""
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1) as reply:
                return reply.status == 200
        except OSError:
            return False

    def tail(self, lines: int = 5) -> str:
        """The last lines of the server log, on one line."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the server (a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its working folder."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalTritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
