"""The runtime, scoring, metrics and data packages work where torch cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from helpers import BLOCKER, TORCH

pytestmark = pytest.mark.slow

SCRIPT = f"BLOCKED = {set(TORCH)!r}\n{BLOCKER}" + textwrap.dedent(
    """
    import numpy as np
    import zsad.data, zsad.evaluation.metrics, zsad.runtime.encode, zsad.api.records
    import zsad.formats.bundle, zsad.runtime.onnx_backend, zsad.runtime.tensorrt_backend
    import zsad.station.run, zsad.formats.thresholds, zsad.cli.app, zsad.evaluation.report
    import zsad.api.detector, zsad.api.infer, zsad.evaluation.thresholds
    import zsad.data.cameras.uri, zsad.data.cameras.store, zsad.data.cameras.genicam
    from zsad.formats.artifact import load_artifact
    from zsad.scoring.headclip import score_headclip
    from zsad.scoring.pipeline import SetScoringConfig, score_set
    from zsad.scoring.stream import RollingStaps

    rng = np.random.default_rng(0)
    taps = rng.standard_normal((6, 2, 1 + 16, 8)).astype(np.float32)
    cls = rng.standard_normal((6, 4)).astype(np.float32)
    scores = score_set(taps, cls, SetScoringConfig(r_list=(1, 3)), image_size=56)
    assert scores.patch_maps.shape == (6, 4, 4)
    rolling = RollingStaps(SetScoringConfig(r_list=(1,)), bank=3, image_size=56)
    streamed = [r for i in range(6) for r in rolling.add(taps[i], cls[i], i)]
    assert [r.position for r in streamed] == list(range(6))
    local = rng.random((6, 2, 16, 4), np.float32)
    text = rng.random((2, 4), np.float32)
    joint, maps = score_headclip(cls, local, text, image_size=56)
    assert joint.shape == (6,) and maps.shape == (6, 56, 56)
    assert not any(m.split(".")[0] == "torch" for m in sys.modules)
    print("ok")
    """
)


def test_runtime_and_scoring_import_and_run_without_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_pytorch_path_without_torch_names_the_extra_to_install(tmp_path) -> None:
    from helpers import one_line_error, zsad

    (tmp_path / "a.png").write_text("x")
    result = zsad("infer", str(tmp_path), "--model", "zsad-tiny", block=TORCH)
    one_line_error(result, "--model zsad-tiny", "zsad[export]", "--bundle")
    result = zsad("export", "--model", "zsad-tiny", "--out", str(tmp_path / "b"), block=TORCH)
    one_line_error(result, "zsad export", "zsad[export]")
