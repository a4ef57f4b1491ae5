"""One encoder backend in a process of its own, so its memory is its own.

Timed in one process, a later backend's process-wide resident peak would include an earlier
one's (ONNX Runtime's row would show torch's weights). So `zsad bench encoder` runs each backend
in a child interpreter that loads only that backend; the bench sends it JSON commands on stdin
and reads JSON answers on stdout. On Linux the child resets its resident high-water mark
(``/proc/self/clear_refs``) before each row, so a row's memory is the peak of the backend's own
process during that row; elsewhere it is the child's peak since it started.

Run as ``python -m zsad.bench.backend_process``; nothing else should start it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np

import zsad
from zsad.bench import measure as bm
from zsad.bench.backends import bundle_backend, check_device, load_backbone, torch_backend
from zsad.errors import ZsadError
from zsad.formats.bundle import FP32_ONNX
from zsad.formats.methods import METHODS

MEMORY_METHODS = {
    "row_hwm": "peak resident memory (VmHWM, MiB) of the backend's own process during the row's "
    "warm-up and timed runs; the high-water mark is reset before each row",
    "process_peak": "peak resident memory (ru_maxrss, MiB) of the backend's own process since it "
    "started (this system cannot reset the high-water mark)",
    "gpu_delta": "GPU memory in use after the row's runs less what was in use before the backend "
    "was opened in its own process (cudaMemGetInfo, MiB): ONNX Runtime's and TensorRT's "
    "allocations and contexts count too",
}


class BackendProcess:
    """The parent's handle on a child process serving one backend (use it as a context)."""

    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        source = str(Path(zsad.__file__).resolve().parents[1])
        env = dict(os.environ)
        # The child must import this same zsad, whichever tree the parent runs from.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
        self.name = name
        self._child = subprocess.Popen(
            [sys.executable, "-m", "zsad.bench.backend_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            ready = self._ask({"command": "open", "name": name, **spec})
        except ZsadError:
            self.close()
            raise
        self.runner_name: str = ready["runner"]
        self.image_size: int = ready["image_size"]
        self.flops: float | None = ready["flops"]
        self.flop_source: str = ready["flop_source"]

    def start_row(self, batch: int, warmup: int) -> None:
        """Reset the child's memory mark, make the batch and run the untimed warm-up."""
        self._ask({"command": "row", "batch": batch, "warmup": warmup})

    def time(self, iters: int, min_seconds: float) -> list[float]:
        """Seconds of at least ``iters`` timed runs lasting ``min_seconds`` in all."""
        return self._ask({"command": "time", "iters": iters, "min_seconds": min_seconds})["seconds"]

    def memory(self) -> tuple[float, str]:
        """(MiB, method key of MEMORY_METHODS) of the current row."""
        answer = self._ask({"command": "memory"})
        return answer["mb"], answer["method"]

    def close(self) -> None:
        """Ask the child to release its backend and wait for it to exit."""
        if self._child.poll() is None:
            try:
                self._send({"command": "close"})
                self._child.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self._child.kill()
                self._child.wait()

    def __enter__(self) -> BackendProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, message: dict[str, Any]) -> None:
        assert self._child.stdin is not None
        self._child.stdin.write(json.dumps(message) + "\n")
        self._child.stdin.flush()

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self._child.stdout is not None
        try:
            self._send(message)
            line = self._child.stdout.readline()
        except OSError:
            line = ""
        if not line:
            code = self._child.wait()
            raise ZsadError(f"{self.name}: the backend's process ended (exit status {code})")
        answer = json.loads(line)
        if "error" in answer:
            raise ZsadError(answer["error"])
        return answer


def bundle_flops(bundle: Path) -> tuple[float | None, str]:
    """FLOPs per image from the bundle's FP32 ONNX graph: every bundle backend runs that math."""
    try:
        return bm.onnx_graph_flops(bundle / FP32_ONNX), f"FLOPs from the {FP32_ONNX} graph"
    except ImportError:
        return None, "flops unavailable: the onnx package is not installed (pip install onnx)"
    except Exception as exc:  # noqa: BLE001 - a missing count must not stop the timing
        return None, f"flops unavailable: {type(exc).__name__}: {str(exc).splitlines()[0]}"


def open_backend(
    name: str,
    model: str,
    weights: Path | None,
    pretrained: str,
    image_size: int,
    device: str,
    bundle: Path | None,
) -> tuple[Any, float | None, str]:
    """The backend for one --backend name, its FLOPs per image, and their source or absence."""
    check_device(name, device)
    if name.startswith("torch"):
        backbone = load_backbone(model, weights, pretrained)
        backend = torch_backend(backbone, name, image_size, device, METHODS["staps"].outputs)
        flops = bm.encoder_flops(bm.encoder_shape(backend.encoder))["total"]
        return backend, flops, "FLOPs from the encoder config"
    backend = bundle_backend(name, bundle, device)  # explains a missing --bundle
    assert bundle is not None
    return (backend, *bundle_flops(bundle))


def gpu_memory_in_use_mb(device: str) -> float:
    """Memory in use on the GPU (total less free), whoever allocated it."""
    from zsad.model.cuda import memory_in_use_mb  # torch: only a CUDA bench reads GPU memory

    return memory_in_use_mb(device)


def release_torch_cache(device: str) -> None:
    """Hand torch's cached GPU blocks back on a CUDA device, so memory read next is what is
    really held; nothing on the CPU, where torch need not be installed."""
    if device.startswith("cuda"):
        from zsad.model.cuda import release_cache  # torch: a CUDA bench only

        release_cache()


# ---------------------------------------------------------------------- the child


def _reset_hwm() -> bool:
    """Reset this process's resident high-water mark; False where the system cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 2**10, 1)
    raise OSError("no VmHWM in /proc/self/status")


class _Server:
    """The child's side: one backend, timed on request."""

    def __init__(self) -> None:
        self.runner: Any = None
        self.device = "cpu"
        self.baseline_mb: float | None = None
        self.pixels: np.ndarray | None = None
        self.reset = False

    def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        command = message["command"]
        if command == "open":
            return self.open(message)
        if command == "row":
            return self.row(message["batch"], message["warmup"])
        if command == "time":
            # One untimed run first: after waiting on the peak sample the backend's threads
            # are cold, and its first run pays for waking them, not for encoding.
            seconds = bm.time_runs(
                lambda: self.runner.run(self.pixels),
                warmup=1,
                iters=message["iters"],
                min_seconds=message["min_seconds"],
            )
            return {"seconds": seconds}
        if command == "memory":
            return self.memory()
        raise ValueError(f"unknown command {command!r}")

    def open(self, message: dict[str, Any]) -> dict[str, Any]:
        self.device = message["device"]
        if self.device.startswith("cuda"):
            release_torch_cache(self.device)
            self.baseline_mb = gpu_memory_in_use_mb(self.device)
        weights, bundle = message["weights"], message["bundle"]
        self.runner, flops, source = open_backend(
            message["name"],
            message["model"],
            None if weights is None else Path(weights),
            message["pretrained"],
            message["image_size"],
            self.device,
            None if bundle is None else Path(bundle),
        )
        return {
            "runner": self.runner.name,
            "image_size": self.runner.image_size,
            "flops": flops,
            "flop_source": source,
        }

    def row(self, batch: int, warmup: int) -> dict[str, Any]:
        release_torch_cache(self.device)
        size = self.runner.image_size
        rng = np.random.default_rng(0)
        self.pixels = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
        self.reset = _reset_hwm()
        for _ in range(warmup):
            self.runner.run(self.pixels)
        return {}

    def memory(self) -> dict[str, Any]:
        if self.baseline_mb is not None:
            used = gpu_memory_in_use_mb(self.device) - self.baseline_mb
            return {"mb": round(used, 1), "method": "gpu_delta"}
        if self.reset:
            return {"mb": _hwm_mb(), "method": "row_hwm"}
        return {"mb": bm.peak_rss_mb(), "method": "process_peak"}

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()


def serve(commands: IO[str], answers: IO[str]) -> None:
    """Answer JSON commands, one a line, until 'close' or the end of input."""
    server = _Server()
    try:
        for line in commands:
            message = json.loads(line)
            if message["command"] == "close":
                break
            try:
                answer = server.handle(message)
            except ZsadError as exc:
                answer = {"error": str(exc)}
            except Exception as exc:  # noqa: BLE001 - any failure goes back as one line
                first = (str(exc).splitlines() or [""])[0]
                answer = {"error": f"{type(exc).__name__}: {first}"}
            answers.write(json.dumps(answer) + "\n")
            answers.flush()
    finally:
        server.close()


def main() -> None:
    """Serve on the original stdout; anything libraries print goes to stderr instead."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, answers)


if __name__ == "__main__":
    main()
