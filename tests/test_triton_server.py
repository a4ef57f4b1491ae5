"""Against a real tritonserver on 127.0.0.1 (nvidia-pytriton's, Python backend running ONNX
Runtime): same scores as the bundle, concurrent clients batched by the server, the HeadCLIP
ensemble, refused mismatches, and a station that rides out the server going away."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from helpers import (
    ENV,
    TORCH,
    assert_each_once,
    one_line_error,
    read_status,
    require_service,
    triton_client_installed,
    triton_env,
    wait_until,
    write_frame,
    zsad,
)
from zsad.bench.triton_server import LocalTritonServer
from zsad.export import parity
from zsad.formats.bundle import Bundle
from zsad.formats.triton import SUFFIXES
from zsad.runtime.onnx_backend import CPU, OnnxBackend
from zsad.runtime.preprocess import preprocess_image
from zsad.runtime.triton_backend import TritonBackend

pytestmark = pytest.mark.slow

require_service(triton_client_installed(), "no Triton client: pip install -e '.[triton]'")

COMMON = ("--no-progress", "--no-overlays")
SERVER_ENV = {"PYTHONPATH": ENV["PYTHONPATH"]}  # the HeadCLIP scorer imports zsad


@pytest.fixture(scope="module")
def repo(bundle: Path, headclip_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("triton-repo")
    for source, extra in ((bundle, ("--name", "staps")), (headclip_bundle, ("--name", "hc"))):
        more = ("--ensemble",) if source == headclip_bundle else ()
        result = zsad(
            "triton", str(source), str(repo), "--form", "python", "--kind", "cpu",
            "--preferred-batch", "2,4", "--queue-delay-us", "20000", "--max-batch", "4",
            *extra, *more,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    return repo


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[LocalTritonServer]:
    with LocalTritonServer(triton_env(), repo, extra_env=SERVER_ENV) as running:
        yield running


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("frames")
    paths = [root / f"{i:03d}.png" for i in range(6)]
    for i, path in enumerate(paths):
        write_frame(path, i, "scratch" if i == 4 else None)
    return paths


def _scores(out: Path) -> dict[str, float]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return {r["path"]: r["score"] for r in map(json.loads, lines)}


@pytest.mark.parametrize(
    ("method", "model", "protocol"),
    [
        ("staps", "staps_python", "grpc"),
        ("headclip", "hc_python", "grpc"),
        ("staps", "staps_python", "http"),
    ],
)
def test_infer_through_triton_matches_the_bundle(
    server: LocalTritonServer,
    bundle: Path,
    headclip_bundle: Path,
    frames: list[Path],
    tmp_path: Path,
    method: str,
    model: str,
    protocol: str,
) -> None:
    source = bundle if method == "staps" else headclip_bundle
    images = [str(p) for p in frames]
    local = zsad(
        "infer", *images, "--method", method, "--bundle", str(source), "--device", "cpu",
        "--out", str(tmp_path / "local"), *COMMON, block=TORCH,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr
    served = zsad(
        "infer", *images, "--method", method, "--triton",
        server.grpc_url if protocol == "grpc" else server.http_url,
        "--triton-model", model, "--bundle", str(source), "--out", str(tmp_path / "served"),
        *COMMON, block=TORCH,
    )  # fmt: skip
    assert served.returncode == 0, served.stderr
    reference, scores = _scores(tmp_path / "local"), _scores(tmp_path / "served")
    assert scores.keys() == reference.keys() and len(scores) == len(frames)
    # 6 images in batches of 8 (infer's default) went to a model taking 4: split, not refused.
    np.testing.assert_allclose(list(scores.values()), list(reference.values()), atol=1e-4)


def _pixels(frames: list[Path], bundle: Bundle) -> np.ndarray:
    from zsad.data.images import as_rgb_array

    return np.stack(
        [
            preprocess_image(as_rgb_array(p), bundle.image_size, bundle.mean, bundle.std)
            for p in frames
        ]
    )


def _batch_sizes(backend: TritonBackend) -> dict[int, int]:
    stats = backend.client.get_inference_statistics(backend.model, as_json=True)
    batches = stats["model_stats"][0].get("batch_stats", [])
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in batches}


def test_concurrent_clients_get_their_own_results_and_are_batched(
    server: LocalTritonServer, bundle: Path, frames: list[Path]
) -> None:
    expected_bundle = Bundle.load(bundle)
    pixels = _pixels(frames, expected_bundle)
    with OnnxBackend(expected_bundle, "encoder.onnx", providers=[CPU]) as local:
        reference = local.run(pixels)
    clients, rounds = 4, 6
    start = threading.Barrier(clients)
    errors: list[str] = []

    def station(index: int) -> None:
        with TritonBackend(server.grpc_url, "staps_python", expect=expected_bundle) as backend:
            for step in range(rounds):
                image = (index + step) % len(frames)
                start.wait(timeout=60)  # every client sends at the same moment
                outputs = backend.run(pixels[image : image + 1])
                for name, value in outputs.items():
                    if not np.allclose(value[0], reference[name][image], atol=1e-4):
                        errors.append(f"client {index} image {image} {name}")

    threads = [threading.Thread(target=station, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    with TritonBackend(server.grpc_url, "staps_python") as probe:
        sizes = _batch_sizes(probe)
    assert sum(size * count for size, count in sizes.items()) >= clients * rounds
    assert max(sizes) > 1, sizes  # the dynamic batcher joined requests from several clients


def test_the_headclip_ensemble_scores_on_the_server(
    server: LocalTritonServer, headclip_bundle: Path, frames: list[Path]
) -> None:
    import tritonclient.grpc as grpcclient

    from zsad.api.detector import Detector

    expected = Bundle.load(headclip_bundle)
    frames = frames[:4]  # the repository's max batch
    pixels = _pixels(frames, expected)
    client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
    request = grpcclient.InferInput("pixels", list(pixels.shape), "FP32")
    request.set_data_from_numpy(pixels)
    reply = client.infer("hc_headclip", [request])
    with Detector.from_bundle(headclip_bundle, device="cpu") as local:
        results = [local.predict(p) for p in frames]
    np.testing.assert_allclose(reply.as_numpy("score")[:, 0], [r.score for r in results], atol=1e-4)
    np.testing.assert_allclose(
        reply.as_numpy("anomaly_map"), np.stack([r.anomaly_map for r in results]), atol=1e-4
    )


@pytest.mark.parametrize(
    ("model", "args", "needle"),
    [
        ("staps_python", ("--method", "headclip"), "exported for --method staps"),
        ("hc_python", ("--method", "headclip", "--bundle", "{staps}"), "serves a different"),
        ("hc_headclip", ("--method", "headclip"), "not the encoder outputs"),
        ("nothing", (), "no such model ready"),
    ],
)
def test_a_served_model_that_does_not_match_is_refused(
    server: LocalTritonServer,
    bundle: Path,
    frames: list[Path],
    tmp_path: Path,
    model: str,
    args: tuple[str, ...],
    needle: str,
) -> None:
    args = tuple(a.format(staps=bundle) for a in args)
    result = zsad(
        "infer", str(frames[0]), "--triton", server.grpc_url, "--triton-model", model, *args,
        "--out", str(tmp_path / "out"), *COMMON, block=TORCH,
    )  # fmt: skip
    one_line_error(result, needle)


def test_a_station_rides_out_the_server_down_killed_and_restarted(
    repo: Path, tmp_path: Path
) -> None:
    server = LocalTritonServer(triton_env(), repo, extra_env=SERVER_ENV)  # not started yet
    hot, out = tmp_path / "hot", tmp_path / "out"
    hot.mkdir()
    script = "import sys\nfrom zsad.cli.app import main\nsys.argv[0] = 'zsad'\nmain()\n"
    station = subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            "watch",
            str(hot),
            "--out",
            str(out),
            "--triton",
            server.grpc_url,
            "--triton-model",
            "staps_python",
            "--bank",
            "2",
            "--triton-timeout",
            "5",
            "--status-every",
            "0.2",
            "--poll-s",
            "0.05",
            "--no-overlays",
        ],  # fmt: skip
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(
            lambda: read_status(out).get("state") == "waiting-for-encoder",
            "start-up wait",
            timeout=90,
        )
        names = [f"{i:03d}.png" for i in range(6)]
        for i, name in enumerate(names[:3]):
            write_frame(hot / name, i)
        server.start()
        wait_until(
            lambda: read_status(out).get("this_run", {}).get("scored") == 3,
            "the first frames",
            timeout=90,
        )
        server.kill()
        for i, name in enumerate(names[3:], start=3):
            write_frame(hot / name, i)
        wait_until(
            lambda: read_status(out).get("state") == "encoder-unreachable", "the outage", timeout=90
        )
        status = read_status(out)
        assert status["encoder"] == "unreachable" and status["encoder_outages"] == 1
        assert status["this_run"]["scored"] == 3 and status["encoder_error"]
        server.start()
        wait_until(
            lambda: read_status(out).get("this_run", {}).get("scored") == 6,
            "the frames after the restart",
            timeout=90,
        )
        assert read_status(out)["encoder"] == "ok"
    finally:
        station.send_signal(signal.SIGINT)
        _, stderr = station.communicate(timeout=60)
        server.stop()
    assert station.returncode == 0, stderr
    assert "encoder unreachable at start" in stderr and "is back" in stderr
    assert_each_once(out, names)
    assert not list((out).glob("rejected/*"))


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_triton_serve_runs_in_the_foreground_until_stopped(
    tmp_path: Path, stop: signal.Signals, status: int
) -> None:
    import urllib.request

    from zsad.bench.triton_server import _free_port

    (tmp_path / "repo").mkdir()  # an empty repository: the server, not the models, is tested
    http, grpc = _free_port(), _free_port()
    script = "import sys\nfrom zsad.cli.app import main\nsys.argv[0] = 'zsad'\nmain()\n"
    command = [sys.executable, "-c", script, "triton-serve", str(tmp_path / "repo")]
    ports = ["--http-port", str(http), "--grpc-port", str(grpc), "--cpu"]
    serving = subprocess.Popen(
        [*command, *ports],
        env={**ENV, "ZSAD_TRITON_ENV": str(triton_env())},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_until(lambda: answers() or serving.poll() is not None, "tritonserver", timeout=120)
        assert serving.poll() is None, serving.communicate()
        # Only zsad gets the signal (a terminal's Ctrl-C would reach the server too).
        serving.send_signal(stop)
        _, err = serving.communicate(timeout=60)
    finally:
        serving.kill()
    assert serving.returncode == status, err
    assert f"on grpc://127.0.0.1:{grpc} and http://127.0.0.1:{http}" in err
    assert not answers()  # the server went with it


def test_bench_triton_measures_served_and_local_in_one_run(bundle: Path, tmp_path: Path) -> None:
    result = zsad(
        "bench", "triton", "--bundle", str(bundle), "--server-env", str(triton_env()),
        "--max-batch", "1,4", "--clients", "1,2", "--seconds", "0.3",
        "--out", str(tmp_path / "bench"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"]
    encoders = sorted({(r["encoder"].split(" (")[0], r["clients"]) for r in rows})
    names = ("local onnxruntime-fp32-cpu", "triton bench_b1_python", "triton bench_b4_python")
    assert encoders == [(name, n) for name in names for n in (1, 2)]
    for row in rows:
        assert row["images"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
        served = row["encoder"].startswith("triton")
        assert (row.get("mean_server_batch") is not None) == served
    assert (tmp_path / "bench" / "throughput.png").is_file()


@pytest.mark.gpu
@pytest.mark.parametrize("form", ["onnx", "fp16", "trt"])
def test_an_ngc_server_on_the_gpu_matches_the_bundle(form: str, frames: list[Path]) -> None:
    # benchmarks/gpu.sh's triton step serves BUNDLE from NVIDIA's tritonserver container
    # (onnxruntime and TensorRT backends on the GPU) and sets these two variables.
    url, root = os.environ.get("ZSAD_TRITON_URL"), os.environ.get("ZSAD_TRITON_BUNDLE")
    require_service(
        bool(url and root), "ZSAD_TRITON_URL/ZSAD_TRITON_BUNDLE unset (benchmarks/gpu.sh triton)"
    )
    expected = Bundle.load(root)
    if form == "trt" and (expected.engine is None or expected.engine.flavour != "trt"):
        pytest.skip(f"{root} has no full TensorRT engine, so the repository has no plan")
    pixels = _pixels(frames, expected)
    with OnnxBackend(expected, "encoder.onnx", providers=[CPU]) as local:
        reference = local.run(pixels)
    with TritonBackend(url, "zsad" + SUFFIXES[form], expect=expected) as served:
        outputs = served.run(pixels)
    # The export's own parity bars: FP32 (TF32 on the GPU may apply), FP16, the engine.
    floor = {
        "onnx": parity.FP32_MIN_COSINE,
        "fp16": parity.FP16_MIN_COSINE,
        "trt": parity.ENGINE_MIN_COSINE,
    }[form]
    for name, value in outputs.items():
        a, b = value.reshape(len(value), -1), reference[name].reshape(len(value), -1)
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        assert cosine.min() >= floor, (name, cosine)
