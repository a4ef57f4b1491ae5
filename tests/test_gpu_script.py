"""benchmarks/gpu.sh, the GPU numbers' one command, run end to end at toy shapes on this machine:
a script that only ever runs on a GPU would otherwise break unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ENV, SOURCE_ROOT

SCRIPT = Path(SOURCE_ROOT).parent / "benchmarks" / "gpu.sh"


@pytest.mark.slow
def test_gpu_script_runs_its_steps_without_onnxruntime_cuda(tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("ONNX Runtime has CUDA here: the script then takes its bundle path")
    out = tmp_path / "out"
    env = ENV | {
        "PATH": f"{Path(sys.executable).parent}:{ENV['PATH']}",
        "MODEL": "zsad-tiny",
        "SIZE": "56",
        "N": "4",
        "FRAMES": "12",
        "TORCH_BACKEND": "torch-fp32",
        "SCORING": "--numpy --n 3,4 --bank 2 --patches 16 --channels 8 --taps 1",
        "WORK": str(tmp_path / "work"),
    }
    steps = ("encoder", "scoring", "pipeline", "station")
    result = subprocess.run(
        ["bash", str(SCRIPT), str(out), *steps],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no ONNX Runtime CUDA provider" in result.stderr
    encoder = json.loads((out / "encoder" / "bench.json").read_text())
    backends = {row["backend"] for row in encoder["rows"]}
    # torch-fp16 only where a GPU is; no ONNX Runtime row without its CUDA provider.
    assert "torch-fp32" in backends and not any(b.startswith("onnxruntime") for b in backends)
    pipeline = json.loads((out / "pipeline-torch-fp32" / "bench.json").read_text())
    assert {row["method"] for row in pipeline["rows"]} == {"staps", "headclip"}
    assert json.loads((out / "station" / "bench.json").read_text())["images"] == 12
    assert json.loads((out / "scoring" / "bench.json").read_text())["rows"]
