"""HeadCLIP scoring in NumPy: text-similarity pixel maps, global scores and the joint anomaly score.

The inputs are the encoder's L2-normalised outputs (``cls`` (N, D) and ``local`` (N, L, P, D),
one row per read-out block of the local path) and
the two text embeddings of a calibration artifact (rows normal, abnormal), so a device needs
neither torch nor the text encoder. The torch module used for training
(:mod:`zsad.model.headclip`) computes the same maps; the tests hold the two together.

Defaults and where they come from:

- temperature 0.07: AnomalyCLIP's similarity scale, which HeadCLIP keeps;
- several read-out blocks: one map per block, averaged (AnomalyCLIP's test script sums them;
  the mean keeps the map in [0, 1], which JAS mixes with a probability);
- upsampling: bilinear with ``align_corners=False``, what AnomalyCLIP's
  ``F.interpolate(..., mode="bilinear")`` does (unlike MuSc's maps, which use ``True``);
- blur: ``scipy.ndimage.gaussian_filter`` with sigma 4 (reflect borders, truncate 4), as
  AnomalyCLIP's test script applies it;
- JAS ratio r = 0.5 and top-k = 1 % of the pixels: HeadCLIP (section 3.4) defines
  ``r * S_global + (1 - r) * mean(top k% of the map)`` but gives no values, and its Fig. 4 shows
  the image-level result flat across r; 0.5 weighs the two evidences equally, and 1 % of a
  518x518 map (about 2,700 pixels, a 52x52 patch) is the size of a typical small defect.
"""

from __future__ import annotations

import numpy as np

from zsad.scoring.maps import patch_grid

TEMPERATURE = 0.07
SIGMA = 4.0
JAS_RATIO = 0.5
TOP_K_PERCENT = 1.0
# scipy's default: the kernel reaches 4 sigma on each side.
BLUR_TRUNCATE = 4.0


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (normal, abnormal), in float64 for stability."""
    exp = np.exp(logits.astype(np.float64) - logits.max(axis=-1, keepdims=True))
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def _check_text(text_embeddings: np.ndarray, dim: int) -> np.ndarray:
    text = np.asarray(text_embeddings, np.float32)
    if text.shape != (2, dim):
        raise ValueError(f"text embeddings of shape {text.shape}: expected (2, {dim})")
    return text


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear weights with align_corners=False, as torch's F.interpolate."""
    weights = np.zeros((n_out, n_in), np.float32)
    # Source coordinate of each output pixel centre, clamped at 0 as torch does.
    pos = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (pos - lo).astype(np.float32)
    rows = np.arange(n_out)
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights


def headclip_maps(
    local_tokens: np.ndarray,
    text_embeddings: np.ndarray,
    *,
    temperature: float = TEMPERATURE,
    image_size: int | None = None,
    sigma: float = SIGMA,
) -> np.ndarray:
    """(N, L, P, D) local tokens -> (N, S, S) pixel maps (1 - P_normal + P_abnormal) / 2 per
    read-out block, averaged, upsampled and blurred.

    ``image_size`` None keeps the patch grid (no upsampling); ``sigma`` <= 0 skips the blur.
    """
    local = np.asarray(local_tokens, np.float32)
    if local.ndim != 4:
        raise ValueError(f"local tokens of shape {local.shape}: expected (N, L, P, D)")
    text = _check_text(text_embeddings, local.shape[-1])
    probs = _softmax(local @ text.T / temperature)
    # Upsampling and blur are linear, so combining (and averaging the read-outs) on the patch
    # grid first gives the same map, cheaper.
    grid = patch_grid(((1.0 - probs[..., 0] + probs[..., 1]) / 2.0).mean(axis=1))
    if image_size is not None:
        side = grid.shape[-1]
        resize = resize_matrix(side, image_size)
        grid = np.matmul(np.matmul(resize, grid), resize.T)
    if sigma > 0:
        from scipy import ndimage  # imported on use: scipy takes a while to load

        grid = ndimage.gaussian_filter(
            grid, sigma=(0.0, sigma, sigma), mode="reflect", truncate=BLUR_TRUNCATE
        )
    return np.ascontiguousarray(grid, dtype=np.float32)


def global_scores(
    cls: np.ndarray, text_embeddings: np.ndarray, temperature: float = TEMPERATURE
) -> np.ndarray:
    """(N, D) CLIP image embeddings -> (N,) softmax probability of the abnormal prompt."""
    cls = np.asarray(cls, np.float32)
    if cls.ndim != 2:
        raise ValueError(f"cls embeddings of shape {cls.shape}: expected (N, D)")
    text = _check_text(text_embeddings, cls.shape[-1])
    return _softmax(cls @ text.T / temperature)[:, 1]


def top_k_count(n_pixels: int, top_k: float) -> int:
    """How many of ``n_pixels`` the top ``top_k`` percent is (at least one)."""
    if not 0 < top_k <= 100:
        raise ValueError(f"top-k {top_k}: must be a percentage in (0, 100]")
    return max(1, int(np.ceil(n_pixels * top_k / 100.0 - 1e-9)))


def jas(
    global_scores: np.ndarray,
    maps: np.ndarray,
    r: float = JAS_RATIO,
    top_k: float = TOP_K_PERCENT,
) -> np.ndarray:
    """Joint anomaly score r * S_global + (1 - r) * mean of the top ``top_k`` % map pixels."""
    if not 0 <= r <= 1:
        raise ValueError(f"JAS ratio r {r}: must be in [0, 1]")
    flat = np.asarray(maps, np.float32).reshape(len(maps), -1)
    count = top_k_count(flat.shape[1], top_k)
    local = np.partition(flat, flat.shape[1] - count, axis=1)[:, -count:].mean(axis=1)
    return (r * np.asarray(global_scores, np.float32) + (1.0 - r) * local).astype(np.float32)


def score_headclip(
    cls: np.ndarray,
    local: np.ndarray,
    text_embeddings: np.ndarray,
    *,
    image_size: int,
    r: float = JAS_RATIO,
    top_k: float = TOP_K_PERCENT,
    temperature: float = TEMPERATURE,
    sigma: float = SIGMA,
) -> tuple[np.ndarray, np.ndarray]:
    """Score images on their own: (N,) joint anomaly scores and (N, S, S) pixel maps."""
    maps = headclip_maps(
        local, text_embeddings, temperature=temperature, image_size=image_size, sigma=sigma
    )
    scores = jas(global_scores(cls, text_embeddings, temperature), maps, r=r, top_k=top_k)
    return scores, maps
