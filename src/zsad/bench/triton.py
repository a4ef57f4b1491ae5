"""`zsad bench triton`: images/s and latency of an encoder served by Triton Inference Server
versus concurrent clients and batch settings, beside the same encoder run locally, in one run.

Each client sends one image per request, as a station does, for a fixed time. The local rows
run the bundle on ONNX Runtime in this process as `zsad infer --bundle` does (FP16 on CUDA where
onnxruntime-gpu finds a GPU, else FP32 on the CPU), one shared session, with the same number of
client threads. Server rows read the server's own statistics to report the mean
batch it executed (1.0: no request ever joined another).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from zsad.bench import measure as bm
from zsad.bench.plots import line_chart
from zsad.bench.report import say, write_report
from zsad.bench.triton_server import LocalTritonServer
from zsad.errors import ZsadError
from zsad.export.triton_repo import RepositoryOptions, write_repository
from zsad.formats.bundle import Bundle
from zsad.formats.urls import read_secret
from zsad.runtime.backend import EncoderBackend
from zsad.runtime.open import open_backend
from zsad.runtime.triton_backend import TOKEN_ENV, TritonBackend


def _load(
    run_once: Callable[[int], Callable[[], Any]], clients: int, seconds: float
) -> dict[str, Any]:
    """``clients`` threads, each calling its ``run_once(i)()`` for ``seconds``; latencies."""
    callers = [run_once(i) for i in range(clients)]
    for call in callers:
        call()  # warm-up: first requests open connections and sessions
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(index: int) -> None:
        start.wait()
        try:
            while time.perf_counter() < deadline[0]:
                began = time.perf_counter()
                callers[index]()
                latencies[index].append(time.perf_counter() - began)
        except ZsadError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline[0] = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if errors:
        raise ZsadError(f"bench triton: a client failed: {errors[0]}")
    flat = [t for per in latencies for t in per]
    percent = bm.percentiles(flat)
    return {
        "images": len(flat),
        "images_per_s": round(len(flat) / wall, 2),
        "p50_ms": percent["p50_ms"],
        "p99_ms": percent["p99_ms"],
    }


def _served_batches(backend: Any) -> tuple[int, int]:
    """(inferences, executions) the server has counted for the model so far."""
    stats = backend.client.get_inference_statistics(backend.model, as_json=True)
    model = stats["model_stats"][0]
    return int(model.get("inference_count", 0)), int(model.get("execution_count", 0))


def bench_triton(
    out: Path,
    *,
    bundle: Path,
    url: str,
    models: list[str],
    clients: list[int],
    seconds: float = 5.0,
    settings: dict[str, str] | None = None,
    ca_file: Path | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Measure local ONNX Runtime and each served model at each client count; writes OUT."""
    expected = Bundle.load(bundle)
    size = expected.image_size
    pixels = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    rows: list[dict[str, Any]] = []
    with open_backend(bundle, device="auto") as local:
        here = f"local {local.name}"
        for n in clients:
            say(f"{here}, {n} client(s)")
            row = _load(lambda _i: lambda: local.run(pixels), n, seconds)
            rows.append({"encoder": here, "clients": n, **row})
    for model in models:
        backends: list[EncoderBackend] = [
            TritonBackend(url, model, expect=expected, ca_file=ca_file, token=token)
            for _ in range(max(clients))
        ]
        try:
            for n in clients:
                say(f"triton {model}, {n} client(s)")
                before = _served_batches(backends[0])
                row = _load(lambda i, bs=backends: lambda: bs[i].run(pixels), n, seconds)
                inferences, executions = np.subtract(_served_batches(backends[0]), before)
                row["mean_server_batch"] = round(inferences / max(executions, 1), 2)
                label = f"triton {model}" + (f" ({settings[model]})" if settings else "")
                rows.append({"encoder": label, "clients": n, **row})
        finally:
            for backend in backends:
                backend.close()
    local_rate = {r["clients"]: r["images_per_s"] for r in rows if r["encoder"].startswith("local")}
    for row in rows:
        row["vs_local"] = round(row["images_per_s"] / local_rate[row["clients"]], 2)
    columns = ["encoder", "clients", "images_per_s", "p50_ms", "p99_ms"]
    columns += ["mean_server_batch", "vs_local"]
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        series.setdefault(row["encoder"], []).append((row["clients"], row["images_per_s"]))
    plot = line_chart(
        out / "throughput.png",
        series,
        title=f"{expected.backbone} {size} px, one image per request",
        xlabel="concurrent clients",
        ylabel="images/s",
    )
    config = {
        "bundle": str(bundle),
        "backbone": expected.backbone,
        "image_size": size,
        "url": url,
        "models": models,
        "settings": settings or {},
        "clients": clients,
        "seconds": seconds,
    }
    md = (
        f"{expected.backbone} at {size} px, one image per request, {seconds:g} s per row; "
        "vs_local: images/s over the local encoder's at the same client count.\n\n"
        + bm.markdown_table(rows, columns)
    )
    env = bm.environment("cuda" if here.endswith("cuda") else "cpu")
    return write_report(out, "triton", env, config, {"rows": rows}, md, [plot])


def bench_local_server(
    out: Path,
    *,
    bundle: Path,
    server_env: Path,
    max_batches: list[int],
    queue_delay_us: int,
    clients: list[int],
    seconds: float,
) -> dict[str, Any]:
    """Serve the bundle from a local pytriton tritonserver (Python backend, ONNX Runtime, CPU),
    one model per max batch size, and run ``bench_triton`` against it."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="zsad-bench-triton-") as folder:
        repo = Path(folder)
        settings = {}
        for max_batch in max_batches:
            name = f"bench_b{max_batch}"
            options = RepositoryOptions(
                name=name,
                forms=("python",),
                max_batch=max_batch,
                preferred_batch=(max_batch,),
                queue_delay_us=queue_delay_us,
                kind="cpu",
            )
            write_repository(bundle, repo, options, log=lambda _line: None)
            settings[f"{name}_python"] = f"max batch {max_batch}, queue {queue_delay_us} us"
        with LocalTritonServer(server_env, repo) as server:
            return bench_triton(
                out,
                bundle=bundle,
                url=server.grpc_url,
                models=list(settings),
                clients=clients,
                seconds=seconds,
                settings=settings,
            )


def run_bench(
    out: Path,
    *,
    bundle: Path,
    url: str | None,
    models: list[str],
    server_env: Path | None,
    max_batches: list[int],
    queue_delay_us: int,
    clients: list[int],
    seconds: float,
    ca_file: Path | None = None,
    token_file: Path | None = None,
) -> dict[str, Any]:
    """Against the running server at ``url`` (its ``models``, over TLS with ``ca_file`` and the
    access token where given), else a local one from ``server_env`` serving one model per max
    batch size."""
    if url is not None:
        if not models:
            raise ZsadError("--triton: needs --triton-model NAME[,NAME...]")
        token = read_secret(TOKEN_ENV, token_file, "Triton token")
        return bench_triton(
            out, bundle=bundle, url=url, models=models, clients=clients, seconds=seconds,
            ca_file=ca_file, token=token,
        )  # fmt: skip
    if server_env is None:
        raise ZsadError("bench triton: give --triton URL (a running server) or --server-env ENV")
    return bench_local_server(
        out,
        bundle=bundle,
        server_env=server_env,
        max_batches=max_batches,
        queue_delay_us=queue_delay_us,
        clients=clients,
        seconds=seconds,
    )
