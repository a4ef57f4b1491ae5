"""A local tritonserver from an nvidia-pytriton environment, for benchmarks and tests on a CPU.

The nvidia-pytriton wheel ships a tritonserver binary with the Python backend only (and pins
numpy<2), so it lives in its own virtual environment; models there run ONNX Runtime inside the
Python backend (``zsad triton --form python``). Binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from zsad.errors import ZsadError, echo_stderr

LOOPBACK = "127.0.0.1"


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
    """Starts tritonserver over ``repo`` on ``address`` (free ports unless given); ``stop`` (or
    ``with``) ends it.

    ``kill`` and ``start`` again (same ports) stand in for a crash and a restart.
    """

    def __init__(
        self,
        env: Path,
        repo: Path,
        *,
        extra_env: dict[str, str] | None = None,
        address: str = LOOPBACK,
        http_port: int | None = None,
        grpc_port: int | None = None,
    ) -> None:
        self.env, self.repo, self.address = Path(env), Path(repo), address
        if not self.repo.is_dir():
            raise ZsadError(f"{repo}: no model repository here (write one with zsad triton)")
        self.dist, version = find_distribution(self.env)
        self.workdir = Path(tempfile.mkdtemp(prefix="zsad-triton-"))
        backend = self.workdir / "backends" / "python"
        shutil.copytree(self.dist / "backends" / "python", backend)
        stub = self.dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        shutil.copy(stub, backend / "triton_python_backend_stub")
        self.http_port = http_port or _free_port()
        self.grpc_port = grpc_port or _free_port()
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
        return f"grpc://{self._host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        """The HTTP endpoint."""
        return f"http://{self._host}:{self.http_port}"

    @property
    def _host(self) -> str:
        # A server listening on every interface is reached here through the loopback.
        return LOOPBACK if self.address in ("0.0.0.0", "") else self.address

    def command(self) -> list[str]:
        """The tritonserver command line."""
        return [
            str(self.dist / "bin" / "tritonserver"),
            f"--model-repository={self.repo.resolve()}",
            f"--backend-directory={self.workdir / 'backends'}",
            f"--http-address={self.address}",
            f"--grpc-address={self.address}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--exit-timeout-secs=5",
        ]

    def start(self, wait_s: float = 120.0) -> LocalTritonServer:
        """Start the server and wait until every model is ready."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environ
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

    def run(self) -> int:
        """Run the server in the foreground, its log on this terminal, until it exits or Ctrl-C;
        its exit status."""
        process = self.process = subprocess.Popen(self.command(), env=self.environ)
        # Ctrl-C reaches the server with this process's group; a SIGTERM (kill, systemd, docker
        # stop) only this process, which would exit and leave the server running.
        previous = signal.signal(signal.SIGTERM, lambda *_: process.terminate())
        try:
            return process.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.stop()

    def __enter__(self) -> LocalTritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    repo: Path,
    env: Path,
    *,
    address: str = LOOPBACK,
    http_port: int = 8000,
    grpc_port: int = 8001,
    cpu: bool = False,
    echo: Callable[[str], None] = echo_stderr,
) -> int:
    """Serve ``repo`` from the pytriton environment ``env`` in the foreground (``zsad
    triton-serve``); the server's exit status."""
    if http_port == grpc_port:
        raise ZsadError(f"--http-port and --grpc-port are both {http_port}; give two ports")
    # The pytriton server runs the Python backend only; hiding the GPUs keeps it off a card that
    # others on this machine use.
    server = LocalTritonServer(
        env,
        repo,
        extra_env={"CUDA_VISIBLE_DEVICES": ""} if cpu else None,
        address=address,
        http_port=http_port,
        grpc_port=grpc_port,
    )
    echo(
        f"zsad: tritonserver over {repo} on {server.grpc_url} and {server.http_url} "
        f"(--triton {server.grpc_url}); Ctrl-C stops it"
    )
    return server.run()
