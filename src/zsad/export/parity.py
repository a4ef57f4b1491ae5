"""Parity numbers between two sets of encoder outputs, and the batch that export checks with."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image

from zsad.runtime.preprocess import OPENAI_MEAN, OPENAI_STD, preprocess_image

FP32_MIN_COSINE = 0.9999  # ONNX Runtime FP32 vs PyTorch
FP16_MIN_COSINE = 0.999  # FP16 ONNX vs FP32 ONNX
ENGINE_MIN_COSINE = 0.997  # engine vs ONNX Runtime FP32 (Polygraphy's usual bar)


def check_batch(
    image_size: int,
    n: int = 2,
    seed: int = 0,
    mean: tuple[float, ...] = OPENAI_MEAN,
    std: tuple[float, ...] = OPENAI_STD,
) -> np.ndarray:
    """Deterministic image-like inputs: smooth random colour fields, preprocessed as photos are."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        field = Image.fromarray(coarse).resize((image_size, image_size), Image.Resampling.BICUBIC)
        noisy = np.asarray(field, np.int16) + rng.integers(
            -12, 13, size=(image_size, image_size, 3)
        )
        images.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return np.stack([preprocess_image(im, image_size, mean, std) for im in images])


def compare(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Per output: the lowest per-image cosine, the lowest per-token cosine and the max |diff|.

    A NaN or infinite value anywhere gives cosine -1 so that it always fails a threshold.
    """
    result = {}
    for name, ref in reference.items():
        cand = np.asarray(candidate[name], np.float64)
        ref = np.asarray(ref, np.float64)
        if cand.shape != ref.shape:
            raise ValueError(f"output {name}: shape {cand.shape} vs reference {ref.shape}")
        finite = bool(np.isfinite(cand).all())
        n = ref.shape[0]
        result[name] = {
            "cosine": _min_cosine(ref.reshape(n, -1), cand.reshape(n, -1)) if finite else -1.0,
            "min_token_cosine": _min_cosine(
                ref.reshape(-1, ref.shape[-1]), cand.reshape(-1, ref.shape[-1])
            )
            if finite
            else -1.0,
            "max_abs_diff": float(np.abs(ref - cand).max()) if finite else float("inf"),
        }
    return result


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    dot = (a * b).sum(axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min(dot / np.maximum(norms, 1e-30)))


def failures(numbers: Mapping[str, Mapping[str, float]], threshold: float) -> list[str]:
    """Outputs whose per-image cosine is below ``threshold``, formatted for an error message."""
    return [
        f"{name} cosine {values['cosine']:.6f} < {threshold}"
        for name, values in numbers.items()
        if not values["cosine"] >= threshold
    ]
