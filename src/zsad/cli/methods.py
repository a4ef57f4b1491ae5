"""Turn --method and its options into an encoder backend and a scorer for a set of images."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from zsad.cli.common import make_backend, require_torch
from zsad.errors import ZsadError
from zsad.runtime.backend import EncoderBackend
from zsad.runtime.encode import EncodedImages
from zsad.scoring.pipeline import SetScoringConfig

METHODS = ("staps", "musc", "headclip")
SET_OUTPUTS = ("cls", "taps")
HEADCLIP_OUTPUTS = ("cls", "local")
_PANEL = "HeadCLIP"

MethodOpt = Annotated[
    str,
    typer.Option(
        "--method",
        help="staps (MuSc maps + BGMPS + STAS), musc (MuSc), or headclip (needs --calibration "
        "or a headclip bundle).",
    ),
]
CalibrationOpt = Annotated[
    Path | None,
    typer.Option(
        "--calibration",
        help="HeadCLIP artifact from `zsad calibrate` (torch path).",
        rich_help_panel=_PANEL,
    ),
]
JasROpt = Annotated[
    float | None,
    typer.Option(
        "--jas-r",
        min=0.0,
        max=1.0,
        help="JAS weight of the global (CLS) score; 1 = no JAS. Default: the artifact's.",
        rich_help_panel=_PANEL,
    ),
]
TopKOpt = Annotated[
    float | None,
    typer.Option(
        "--top-k",
        min=0.0,
        max=100.0,
        help="JAS: percent of the highest map pixels averaged. Default: the artifact's.",
        rich_help_panel=_PANEL,
    ),
]

# (image scores (N,), maps (N, h, w) at any resolution, facts for the summary)
Scored = tuple[np.ndarray, np.ndarray, dict[str, Any]]


@dataclass
class MethodSetup:
    """What a detection command needs: the backend, the scorer and the settings to record."""

    backend: EncoderBackend
    score: Callable[[EncodedImages], Scored]
    settings: dict[str, Any]


@dataclass(frozen=True)
class EncoderChoice:
    """Where the encoder comes from: a model (torch) or a bundle/engine (runtime only)."""

    model: str
    weights: Path | None
    pretrained: str
    image_size: int | None
    device: str
    bundle: Path | None
    engine: Path | None


def setup_method(
    method: str,
    encoder: EncoderChoice,
    scoring: SetScoringConfig,
    *,
    calibration: Path | None = None,
    jas_r: float | None = None,
    top_k: float | None = None,
    progress: bool = False,
) -> MethodSetup:
    """Build the backend and scorer for --method, checking the options fit together."""
    if method not in METHODS:
        raise ZsadError(f"--method {method!r}: choose from {', '.join(METHODS)}")
    if method == "headclip":
        return _headclip(encoder, calibration, jas_r, top_k)
    if calibration is not None:
        raise ZsadError(f"--calibration {calibration}: only used with --method headclip")
    scoring = replace(scoring, method=method)
    backend = open_encoder(encoder, SET_OUTPUTS)

    def score(encoded: EncodedImages) -> Scored:
        from zsad.scoring.pipeline import score_set

        if len(encoded.paths) < 2:
            raise ZsadError(
                f"{len(encoded.paths)} readable image(s): mutual scoring needs at least 2"
            )
        result = score_set(
            encoded.outputs["taps"], encoded.outputs["cls"], scoring, progress=progress
        )
        info = {k: v for k, v in result.info.items() if k != "order"}
        return result.image_scores, result.patch_maps, info

    return MethodSetup(backend, score, asdict(scoring))


def open_encoder(encoder: EncoderChoice, outputs: tuple[str, ...]) -> EncoderBackend:
    """The backend for this encoder choice, computing ``outputs``."""
    return make_backend(
        encoder.model,
        encoder.weights,
        encoder.pretrained,
        encoder.image_size,
        outputs,
        encoder.device,
        bundle=encoder.bundle,
        engine=encoder.engine,
    )


# (cls (N, D), local (N, P, D)) -> (image scores (N,), pixel maps (N, S, S))
HeadclipScore = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def headclip_scoring(
    encoder: EncoderChoice, calibration: Path | None, jas_r: float | None, top_k: float | None
) -> tuple[EncoderBackend, HeadclipScore, dict[str, Any]]:
    """The HeadCLIP backend, its per-image scorer and the settings to record."""
    from zsad.calibration.artifact import load_artifact

    from_bundle = encoder.bundle is not None or encoder.engine is not None
    if from_bundle:
        if calibration is not None:
            raise ZsadError(
                f"--calibration {calibration}: a headclip bundle carries its own calibration"
            )
        backend = open_encoder(encoder, HEADCLIP_OUTPUTS)
        bundle = backend.bundle  # type: ignore[attr-defined]
        artifact = load_artifact(bundle.file(bundle.calibration))
    else:
        if calibration is None:
            raise ZsadError(
                "--method headclip: needs --calibration ARTIFACT (from zsad calibrate) or a "
                "headclip --bundle"
            )
        artifact = load_artifact(calibration, backbone=encoder.model, image_size=encoder.image_size)
        backend = _headclip_torch_backend(encoder, artifact)
    hp = artifact.hyperparameters
    r = hp["jas_r"] if jas_r is None else jas_r
    k = hp["top_k"] if top_k is None else top_k

    def score(cls: np.ndarray, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from zsad.scoring.headclip import score_headclip

        return score_headclip(
            cls,
            local,
            artifact.text_embeddings,
            image_size=backend.image_size,
            r=r,
            top_k=k,
            temperature=hp["temperature"],
            sigma=hp["sigma"],
        )

    settings = {"method": "headclip", "jas_r": r, "top_k": k, "backbone": artifact.backbone}
    return backend, score, settings


def _headclip(
    encoder: EncoderChoice, calibration: Path | None, jas_r: float | None, top_k: float | None
) -> MethodSetup:
    backend, score_images, settings = headclip_scoring(encoder, calibration, jas_r, top_k)

    def score(encoded: EncodedImages) -> Scored:
        if not encoded.paths:
            raise ZsadError("no readable images to score")
        scores, maps = score_images(encoded.outputs["cls"], encoded.outputs["local"])
        return scores, maps, {"method": "headclip"}

    return MethodSetup(backend, score, settings)


def _headclip_torch_backend(encoder: EncoderChoice, artifact: Any) -> EncoderBackend:
    require_torch(f"--model {encoder.model}", "; or run a bundle with --bundle")
    from zsad.model import load_clip
    from zsad.model.backend import TorchBackend
    from zsad.model.headclip import encoder_from_artifact

    clip = load_clip(encoder.model, weights=encoder.weights, pretrained=encoder.pretrained)
    return TorchBackend(encoder_from_artifact(clip, artifact), device=encoder.device)
