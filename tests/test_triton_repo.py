"""`zsad triton`: the model repository, checked against Triton's own config schema, the
client's one-line errors when no server is there, and `zsad triton-serve` against a stand-in
tritonserver."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import (
    BUNDLE_SIZE,
    ENV,
    TORCH,
    one_line_error,
    require_service,
    triton_client_installed,
    write_frame,
    zsad,
)
from zsad.formats.bundle import sha256_file
from zsad.formats.triton import PARAM_BUNDLE, PARAM_CALIBRATION, PARAM_FILE

require_service(triton_client_installed(), "no Triton client: pip install -e '.[triton]'")

# Triton's own schema, from the triton extra (hence after the check).
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

pytestmark = pytest.mark.slow

FP32 = model_config_pb2.DataType.Value("TYPE_FP32")
CPU = model_config_pb2.ModelInstanceGroup.Kind.Value("KIND_CPU")
GPU = model_config_pb2.ModelInstanceGroup.Kind.Value("KIND_GPU")


def _configs(repo: Path) -> dict[str, model_config_pb2.ModelConfig]:
    return {
        path.parent.name: text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        for path in sorted(repo.glob("*/config.pbtxt"))
    }


def _with_trt_engine(bundle: Path, tmp_path: Path, max_batch: int) -> Path:
    """A copy of the bundle listing a (stand-in) full TensorRT engine."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / "encoder.engine").write_bytes(b"plan bytes")
    meta = json.loads((copy / "bundle.json").read_text())
    meta["engine"] = {
        "file": "encoder.engine",
        "flavour": "trt",
        "tensorrt_version": "10.0",
        "compute_capabilities": ["9.0"],
        "batch": {"min": 1, "opt": 2, "max": max_batch},
    }
    meta["files"]["encoder.engine"] = {
        "sha256": sha256_file(copy / "encoder.engine"),
        "bytes": (copy / "encoder.engine").stat().st_size,
    }
    (copy / "bundle.json").write_text(json.dumps(meta))
    return copy


def test_every_config_parses_and_matches_the_bundle(bundle: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = zsad(
        "triton", str(bundle), str(repo), "--form", "onnx,fp16,python", "--max-batch", "8",
        "--preferred-batch", "2,4,16", "--queue-delay-us", "500", "--instances", "2",
        "--kind", "cpu", block=TORCH,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    configs = _configs(repo)
    assert sorted(configs) == ["zsad", "zsad_fp16", "zsad_python"]
    meta = json.loads((bundle / "bundle.json").read_text())
    for name, config in configs.items():
        assert config.name == name and config.max_batch_size == 8
        assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]  # 16 > max batch
        assert config.dynamic_batching.max_queue_delay_microseconds == 500
        assert [(g.count, g.kind) for g in config.instance_group] == [(2, CPU)]
        (pixels,) = config.input
        assert (pixels.name, pixels.data_type) == (meta["input"]["name"], FP32)
        assert list(pixels.dims) == [3, BUNDLE_SIZE, BUNDLE_SIZE]
        outputs = {o.name: list(o.dims) for o in config.output}
        assert outputs == {k: v[1:] for k, v in meta["output_shapes"].items()}
        assert json.loads(config.parameters[PARAM_BUNDLE].string_value) == meta
        served = config.parameters[PARAM_FILE].string_value
        model_file = repo / name / "1" / "model.onnx"
        assert sha256_file(model_file) == meta["files"][served]["sha256"]
    assert configs["zsad"].platform == configs["zsad_fp16"].platform == "onnxruntime_onnx"
    assert configs["zsad_fp16"].parameters[PARAM_FILE].string_value == "encoder.fp16.onnx"
    assert configs["zsad_python"].backend == "python"
    assert (repo / "zsad_python" / "1" / "model.py").read_text().startswith('"""Triton')


def test_the_openvino_form_serves_the_fp32_file_on_the_cpu(bundle: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = zsad("triton", str(bundle), str(repo), "--form", "onnx,openvino", block=TORCH)
    assert result.returncode == 0, result.stderr
    configs = _configs(repo)
    config = configs["zsad_openvino"]
    assert config.backend == "openvino" and not config.platform
    assert config.default_model_filename == "model.onnx"
    # On the CPU whatever --kind says: Triton's OpenVINO backend has no NVIDIA GPU device.
    assert [g.kind for g in config.instance_group] == [CPU]
    assert configs["zsad"].instance_group[0].kind == GPU
    assert config.parameters["PERFORMANCE_HINT"].string_value == "LATENCY"
    assert config.parameters[PARAM_FILE].string_value == "encoder.onnx"
    meta = json.loads((bundle / "bundle.json").read_text())
    served = repo / "zsad_openvino" / "1" / "model.onnx"
    assert sha256_file(served) == meta["files"]["encoder.onnx"]["sha256"]
    assert list(config.input[0].dims) == [3, BUNDLE_SIZE, BUNDLE_SIZE]


def test_headclip_carries_its_calibration_and_the_ensemble_parses(
    headclip_bundle: Path, tmp_path: Path
) -> None:
    # The fixture exported with --triton: the default forms (no engine, so no plan).
    exported = _configs(headclip_bundle / "triton")
    assert sorted(exported) == ["zsad", "zsad_fp16"]
    assert [g.kind for g in exported["zsad"].instance_group] == [GPU]
    repo = tmp_path / "repo"
    result = zsad(
        "triton", str(headclip_bundle), str(repo), "--form", "python", "--name", "hc",
        "--ensemble", "--max-batch", "4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    configs = _configs(repo)
    assert sorted(configs) == ["hc_headclip", "hc_headclip_scorer", "hc_python"]
    carried = base64.b64decode(configs["hc_python"].parameters[PARAM_CALIBRATION].string_value)
    assert carried == (headclip_bundle / "calibration.safetensors").read_bytes()
    ensemble = configs["hc_headclip"]
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 4
    first, second = ensemble.ensemble_scheduling.step
    assert (first.model_name, second.model_name) == ("hc_python", "hc_headclip_scorer")
    assert dict(first.output_map) == dict(second.input_map)  # the scorer gets the features
    assert {o.name: list(o.dims) for o in ensemble.output} == {
        "score": [1],
        "anomaly_map": [BUNDLE_SIZE, BUNDLE_SIZE],
    }
    scorer = repo / "hc_headclip_scorer" / "1"
    assert (scorer / "calibration.safetensors").read_bytes() == carried


def test_a_full_tensorrt_engine_becomes_a_plan(bundle: Path, tmp_path: Path) -> None:
    copy = _with_trt_engine(bundle, tmp_path, max_batch=4)
    repo = tmp_path / "repo"
    result = zsad("triton", str(copy), str(repo), "--form", "trt", "--max-batch", "16")
    assert result.returncode == 0, result.stderr
    config = _configs(repo)["zsad_trt"]
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 4  # the engine's
    assert [g.kind for g in config.instance_group] == [GPU]
    assert (repo / "zsad_trt" / "1" / "model.plan").read_bytes() == b"plan bytes"


def test_without_a_full_tensorrt_engine_the_plan_is_skipped_with_a_reason(
    bundle: Path, tmp_path: Path
) -> None:
    result = zsad("triton", str(bundle), str(tmp_path / "repo"), "--form", "onnx,trt")
    assert result.returncode == 0, result.stderr
    assert "zsad_trt: skipped" in result.stderr and "no engine" in result.stderr
    assert sorted(_configs(tmp_path / "repo")) == ["zsad"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--ensemble",), "only headclip"),
        (("--form", "onnx,savedmodel"), "--form savedmodel"),
        (("--name", "a b"), "--name"),
        (("--preferred-batch", "0"), "--preferred-batch"),
    ],
)
def test_bad_repository_requests_are_one_line_errors(
    bundle: Path, tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    one_line_error(zsad("triton", str(bundle), str(tmp_path / "repo"), *args), needle)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("triton", "model", "needle"),
    [
        ("grpc://127.0.0.1:{port}", "zsad", "server unreachable"),
        ("http://127.0.0.1:{port}", "zsad", "server unreachable"),
        ("grpcs://127.0.0.1:{port}", "zsad", "server unreachable"),
        ("https://127.0.0.1:{port}", "zsad", "server unreachable"),
        ("ftp://127.0.0.1:{port}", "zsad", "expected grpc://HOST:PORT"),
        ("grpc://127.0.0.1:{port}", None, "needs --triton-model"),
    ],
)
def test_no_server_is_one_line_error(
    tmp_path: Path, triton: str, model: str | None, needle: str
) -> None:
    write_frame(tmp_path / "a.png", 0)
    url = triton.format(port=_closed_port())
    extra = () if model is None else ("--triton-model", model)
    result = zsad(
        "infer", str(tmp_path / "a.png"), "--triton", url, *extra, "--triton-timeout", "2",
        "--out", str(tmp_path / "out"), block=TORCH,
    )  # fmt: skip
    one_line_error(result, needle)


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_a_server_that_never_answers_times_out_in_one_line(tmp_path: Path, scheme: str) -> None:
    write_frame(tmp_path / "a.png", 0)
    with socket.socket() as silent:  # accepts connections (the backlog) and says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"{scheme}://127.0.0.1:{silent.getsockname()[1]}"
        result = zsad(
            "infer", str(tmp_path / "a.png"), "--triton", url, "--triton-model", "zsad",
            "--triton-timeout", "1", "--out", str(tmp_path / "out"), block=TORCH,
        )  # fmt: skip
    one_line_error(result, "unreachable or too slow")


def _stand_in_env(root: Path, status: int) -> Path:
    """A pytriton environment whose tritonserver prints its arguments and the GPUs it was
    shown, then exits with ``status``."""
    dist = root / "lib" / "python3.11" / "site-packages" / "pytriton" / "tritonserver"
    (dist / "backends" / "python").mkdir(parents=True)
    (dist / "python_backend_stubs" / "3.11").mkdir(parents=True)
    (dist / "python_backend_stubs" / "3.11" / "triton_python_backend_stub").write_text("")
    (dist / "bin").mkdir()
    server = dist / "bin" / "tritonserver"
    server.write_text(
        f'#!/bin/sh\necho "args: $*"\necho "gpus: ${{CUDA_VISIBLE_DEVICES-all}}"\nexit {status}\n'
    )
    server.chmod(0o755)
    return root


def _serve(*args: str, env: Path) -> tuple[int, str, str]:
    script = "import sys\nfrom zsad.cli.app import main\nsys.argv[0] = 'zsad'\nmain()\n"
    result = subprocess.run(
        [sys.executable, "-c", script, "triton-serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**ENV, "ZSAD_TRITON_ENV": str(env)},
    )
    return result.returncode, result.stdout, result.stderr


def test_triton_serve_runs_tritonserver_over_the_repository(tmp_path: Path) -> None:
    env, repo = _stand_in_env(tmp_path / "env", 0), tmp_path / "repo"
    repo.mkdir()
    code, out, err = _serve(str(repo), env=env)
    assert code == 0, err
    assert "on grpc://127.0.0.1:8001 and http://127.0.0.1:8000" in err and "Ctrl-C" in err
    args = dict(a.split("=", 1) for a in out.splitlines()[0].removeprefix("args: ").split())
    assert args["--model-repository"] == str(repo.resolve())
    assert args["--grpc-address"] == args["--http-address"] == "127.0.0.1"
    assert (args["--grpc-port"], args["--http-port"]) == ("8001", "8000")
    assert "gpus: all" in out
    # The backend folder (the Python backend and its stub) was temporary.
    assert not os.path.exists(args["--backend-directory"])


def test_triton_serve_passes_ports_address_cpu_and_the_exit_status(tmp_path: Path) -> None:
    env, repo = _stand_in_env(tmp_path / "env", 3), tmp_path / "repo"
    repo.mkdir()
    code, out, err = _serve(
        str(repo), "--cpu", "--grpc-port", "9001", "--http-port", "9000",
        "--address", "0.0.0.0", env=env,
    )  # fmt: skip
    assert code == 3, err
    assert "--http-address=0.0.0.0 --grpc-address=0.0.0.0 --http-port=9000 --grpc-port=9001" in out
    assert "gpus: \n" in out + "\n"  # --cpu: no GPU is shown to the server


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("{tmp}/missing",), "no model repository"),
        (("{tmp}/repo", "--grpc-port", "8000"), "both 8000"),
        (("{tmp}/repo", "--server-env", "{tmp}/none"), "no tritonserver from nvidia-pytriton"),
    ],
)
def test_triton_serve_refuses_in_one_line(
    tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    env = _stand_in_env(tmp_path / "env", 0)
    (tmp_path / "repo").mkdir()
    code, out, err = _serve(*(a.format(tmp=tmp_path) for a in args), env=env)
    assert code == 2 and err.startswith("zsad: error: ") and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "args:" not in out
