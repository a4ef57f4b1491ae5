"""The memory model (zsad.formats.memory) against what NumPy scoring allocates, and the
deployment doc's table against the model."""

from __future__ import annotations

import importlib.util
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from helpers import SOURCE_ROOT
from zsad.formats.memory import ScoringShape, msm_buffers, set_footprint
from zsad.scoring import mutual_scores
from zsad.scoring.pipeline import SetScoringConfig, expert_maps

ROOT = Path(SOURCE_ROOT).parent


def _unit(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.standard_normal(shape, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("n", "patches", "channels", "bank"), [(8, 256, 64, 0), (3, 576, 96, 24)])
def test_msm_buffers_match_the_traced_peak(n, patches, channels, bank) -> None:
    rng = np.random.default_rng(0)
    features = _unit(rng, (n, patches, channels))
    refs = _unit(rng, (bank, patches, channels)) if bank else None
    peak = _peak(lambda: mutual_scores(features, bank=refs, device="cpu"))
    model = msm_buffers(n, bank or n, ScoringShape(1, patches + 1, channels, 1), 4)
    # The model counts the budget-bounded buffers at their largest: never below the peak.
    assert peak <= model <= 1.25 * peak


# The MSM call's moment is the larger at many patches, LNAMD's at many channels.
@pytest.mark.parametrize(("n", "taps", "tokens", "channels"), [(10, 1, 401, 96), (12, 2, 65, 1024)])
def test_a_sets_scoring_on_the_cpu_matches_the_traced_peak(n, taps, tokens, channels) -> None:
    rng = np.random.default_rng(1)
    tokens_f16 = rng.standard_normal((n, taps, tokens, channels), dtype=np.float32)
    tokens_f16 = tokens_f16.astype(np.float16)
    config = SetScoringConfig(device="cpu")
    shape = ScoringShape(taps, tokens, channels, taps * len(config.r_list))
    expert_maps(tokens_f16[:3, :, :17], config)  # imports and first calls: not scoring's memory
    peak = _peak(lambda: expert_maps(tokens_f16, config))
    # The taps were made before tracing; the model holds them as kept per image. LNAMD's box
    # filter pads small grids, which the model does not count.
    model = set_footprint(n, shape, gpu=False).host - n * taps * tokens * channels * 2
    assert 0.85 * peak <= model <= 1.25 * peak


def _table_script():
    spec = importlib.util.spec_from_file_location(
        "memory_table", ROOT / "benchmarks" / "memory_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_deployment_docs_table_is_the_models() -> None:
    script = _table_script()
    doc = (ROOT / "docs" / "deployment.md").read_text()
    assert script.render() in doc, "regenerate: python benchmarks/memory_table.py --write"
