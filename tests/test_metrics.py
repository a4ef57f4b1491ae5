"""zsad.evaluation.metrics against scikit-learn, hand-computed cases and slow reference code."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from zsad.evaluation import metrics
from zsad.evaluation.metrics import image_metrics, pixel_metrics

PIXEL_KEYS = {"auroc", "ap", "f1_max", "aupro", "iou_max"}


# ---------------------------------------------------------------- slow references


def reference_curve_maxima(masks: np.ndarray, maps: np.ndarray) -> tuple[float, float]:
    """Max F1 and max IoU over every distinct threshold, by explicit thresholding."""
    gt = masks.astype(bool)
    best_f1 = best_iou = 0.0
    for t in np.unique(maps):
        pred = maps >= t
        tp = np.sum(pred & gt)
        fp = np.sum(pred & ~gt)
        fn = np.sum(~pred & gt)
        best_f1 = max(best_f1, 2 * tp / (2 * tp + fp + fn))
        best_iou = max(best_iou, tp / (tp + fp + fn))
    return float(best_f1), float(best_iou)


def reference_aupro(masks: np.ndarray, maps: np.ndarray, limit: float = 0.3) -> float:
    """AUPRO with explicit thresholds, per-region loops and an interpolated trapezoid."""
    regions = []
    for mask, amap in zip(masks.astype(bool), maps, strict=True):
        labeled, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        regions.extend(amap[labeled == k] for k in range(1, n + 1))
    normal = maps[~masks.astype(bool)]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        fprs.append(float(np.mean(normal >= t)))
        pros.append(float(np.mean([np.mean(r >= t) for r in regions])))
    area = 0.0
    for i in range(1, len(fprs)):
        x0, x1, y0, y1 = fprs[i - 1], fprs[i], pros[i - 1], pros[i]
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_at = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_at) / 2
            break
    return area / limit


def blob_masks(rng: np.random.Generator, n: int, h: int, w: int, max_blobs: int = 3) -> np.ndarray:
    """Masks with a few random rectangles per image; some images stay anomaly-free."""
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        for _ in range(rng.integers(0, max_blobs + 1)):
            y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
            dy, dx = rng.integers(1, max(2, h // 3)), rng.integers(1, max(2, w // 3))
            masks[i, y : y + dy, x : x + dx] = True
    masks[0, 1:3, 1:3] = True  # at least one anomaly in every data set
    return masks


@pytest.fixture(params=[None, 7, 1], ids=["chunk-default", "chunk-7", "chunk-1"])
def chunk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run with the default chunk size and with tiny chunks that split tie groups."""
    if request.param is not None:
        monkeypatch.setattr(metrics, "_CHUNK", request.param)


# ---------------------------------------------------------------- image_metrics


@pytest.mark.parametrize("ties", [False, True])
def test_image_metrics_match_sklearn(ties: bool) -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    scores = rng.normal(size=300) + labels
    if ties:
        scores = np.round(scores, 1)
    out = image_metrics(labels.astype(int), scores)
    assert set(out) == {"auroc", "ap", "f1_max"}
    assert out["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert out["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    ref_f1, _ = reference_curve_maxima(labels[None, None], scores[None, None])
    assert out["f1_max"] == pytest.approx(ref_f1, abs=1e-12)


def test_image_metrics_hand_computed() -> None:
    # Thresholds 0.8/0.4/0.35/0.1 give (P, R) = (1, .5), (.5, .5), (2/3, 1), (.5, 1):
    # F1 = 2/3, 1/2, 4/5, 2/3 -> 0.8; AUROC = 3 of 4 pairs ordered = 0.75;
    # AP = .5 * 1 + .5 * 2/3 = 5/6.
    out = image_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert out["f1_max"] == pytest.approx(0.8)
    assert out["auroc"] == pytest.approx(0.75)
    assert out["ap"] == pytest.approx(5 / 6)


def test_image_metrics_perfect_separation() -> None:
    out = image_metrics(np.array([0, 1, 0, 1, 1]), np.array([0.1, 0.9, 0.2, 0.7, 0.8]))
    assert out == {"auroc": 1.0, "ap": 1.0, "f1_max": 1.0}


def test_image_metrics_single_class_is_nan_not_error() -> None:
    no_anomaly = image_metrics(np.zeros(4, dtype=int), np.arange(4.0))
    assert all(math.isnan(v) for v in no_anomaly.values())
    all_anomalous = image_metrics(np.ones(4, dtype=int), np.arange(4.0))
    assert math.isnan(all_anomalous["auroc"])
    assert all_anomalous["ap"] == 1.0
    assert all_anomalous["f1_max"] == 1.0


def test_image_metrics_validation() -> None:
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        image_metrics(np.array([0, 1, 0]), np.zeros(4))
    with pytest.raises(ValueError, match="0 and 1"):
        image_metrics(np.array([0, 2]), np.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        image_metrics(np.array([0, 1]), np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="empty"):
        image_metrics(np.zeros(0), np.zeros(0))


# ---------------------------------------------------------------- pixel_metrics


@pytest.mark.parametrize(
    "kind", ["float32", "float32-ties", "float64", "float64-ties", "uint8", "signed-zeros"]
)
def test_pixel_metrics_match_sklearn_and_brute_force(kind: str, chunk: None) -> None:
    rng = np.random.default_rng(1)
    masks = blob_masks(rng, 5, 16, 13)
    noise = rng.normal(size=masks.shape) + 0.8 * masks
    maps = {
        "float32": noise.astype(np.float32),
        "float32-ties": np.round(noise, 1).astype(np.float32),
        "float64": noise,  # not float32-representable: exercises the argsort path
        "float64-ties": np.round(noise, 1),
        "uint8": np.clip(noise * 3 + 5, 0, 12).astype(np.uint8),
        "signed-zeros": np.where(
            noise > 0.5, np.round(noise), np.where(rng.random(masks.shape) < 0.5, -0.0, 0.0)
        ),
    }[kind]
    out = pixel_metrics(masks, maps)
    assert set(out) == PIXEL_KEYS
    y, s = masks.ravel(), maps.ravel().astype(np.float64)
    assert out["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert out["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    ref_f1, ref_iou = reference_curve_maxima(masks, maps)
    assert out["f1_max"] == pytest.approx(ref_f1, abs=1e-12)
    assert out["iou_max"] == pytest.approx(ref_iou, abs=1e-12)
    assert out["aupro"] == pytest.approx(reference_aupro(masks, maps), abs=1e-9)


@pytest.mark.parametrize("seed", [2, 3, 4])
def test_aupro_matches_slow_reference(seed: int, chunk: None) -> None:
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, 4, 12, 12, max_blobs=4)
    maps = (rng.random(masks.shape) + 0.5 * masks * rng.random(masks.shape)).astype(np.float32)
    assert pixel_metrics(masks, maps)["aupro"] == pytest.approx(
        reference_aupro(masks, maps), abs=1e-9
    )


def test_argsort_path_equals_packed_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    masks = blob_masks(rng, 6, 20, 20)
    maps = np.round(rng.normal(size=masks.shape) + masks, 2).astype(np.float32)
    packed = pixel_metrics(masks, maps)
    monkeypatch.setattr(metrics, "_fits_float32", lambda _maps: False)
    assert pixel_metrics(masks, maps) == pytest.approx(packed, abs=1e-12)


def test_pixel_f1_iou_hand_computed() -> None:
    # Descending scores .9 (anomalous), .5, .2 (anomalous), .1 with 2 anomalous pixels:
    # (tp, fp) = (1,0), (1,1), (2,1), (2,2) -> F1 = 2/3, 1/2, 4/5, 2/3; IoU = 1/2, 1/3, 2/3, 1/2.
    masks = np.array([[[1, 1], [0, 0]]])
    maps = np.array([[[0.9, 0.2], [0.5, 0.1]]])
    out = pixel_metrics(masks, maps)
    assert out["f1_max"] == pytest.approx(0.8)
    assert out["iou_max"] == pytest.approx(2 / 3)
    assert out["auroc"] == pytest.approx(0.75)


def _two_regions() -> np.ndarray:
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0, 1:5, 1:5] = True  # 16 pixels
    masks[1, 6:8, 6:7] = True  # 2 pixels
    return masks


def test_aupro_one_of_two_regions_flat_half() -> None:
    # Region A scores above every normal pixel, region B below all of them: the curve is
    # (0,0) -> (0,.5) -> (1,.5) -> (1,1), so PRO = 0.5 on [0, 0.3].
    masks = _two_regions()
    maps = np.ones(masks.shape)
    maps[0, 1:5, 1:5] = 2.0
    maps[1, 6:8, 6:7] = 0.0
    out = pixel_metrics(masks, maps)
    assert out["aupro"] == pytest.approx(0.5, abs=1e-12)
    # Pixel-wise recall would weight the big region 16:2; PRO weights regions equally.
    assert out["iou_max"] == pytest.approx(16 / 18)


def test_aupro_one_region_detected_rest_tied() -> None:
    # Region B ties with the normal pixels: (0,0) -> (0,.5) -> (1,1); at FPR .3 PRO = .65,
    # area = .3 * (.5 + .65) / 2, divided by .3 -> 0.575.
    masks = _two_regions()
    maps = np.zeros(masks.shape)
    maps[0, 1:5, 1:5] = 1.0
    assert pixel_metrics(masks, maps)["aupro"] == pytest.approx(0.575, abs=1e-12)


def test_aupro_perfect_map_is_one() -> None:
    masks = _two_regions()
    out = pixel_metrics(masks, masks.astype(np.float32))
    assert out == {"auroc": 1.0, "ap": 1.0, "f1_max": 1.0, "aupro": 1.0, "iou_max": 1.0}


def test_aupro_of_noise_is_about_0_15() -> None:
    # PRO ~ FPR for scores independent of the masks: area .3**2 / 2, divided by .3.
    rng = np.random.default_rng(6)
    masks = blob_masks(rng, 30, 48, 48)
    maps = rng.random(masks.shape, dtype=np.float32)
    out = pixel_metrics(masks, maps)
    assert out["aupro"] == pytest.approx(0.15, abs=0.02)
    assert out["auroc"] == pytest.approx(0.5, abs=0.03)


def test_regions_are_8_connected() -> None:
    # Two pixels plus one diagonal neighbour form ONE region of 3 pixels (MVTec: 3x3 ones
    # structure); only the diagonal pixel is detected, so PRO = 1/3 (4-connectivity: 1/2).
    masks = np.zeros((1, 6, 6), dtype=bool)
    masks[0, 1, 1:3] = True
    masks[0, 2, 3] = True
    maps = np.ones(masks.shape)
    maps[0, 1, 1:3] = 0.0
    maps[0, 2, 3] = 2.0
    assert pixel_metrics(masks, maps)["aupro"] == pytest.approx(1 / 3, abs=1e-12)


def test_regions_do_not_span_images() -> None:
    # Same location in two images = two regions: (1 + 0) / 2, not 2/3 of one merged region.
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0, 0:2] = True
    masks[1, 0, 0] = True
    maps = np.ones(masks.shape)
    maps[0, 0, 0:2] = 2.0
    maps[1, 0, 0] = 0.0
    assert pixel_metrics(masks, maps)["aupro"] == pytest.approx(0.5, abs=1e-12)


def test_pixel_metrics_without_anomalies_are_nan() -> None:
    out = pixel_metrics(np.zeros((2, 4, 4), dtype=bool), np.random.default_rng(7).random((2, 4, 4)))
    assert set(out) == PIXEL_KEYS
    assert all(math.isnan(v) for v in out.values())


def test_pixel_metrics_without_normal_pixels() -> None:
    out = pixel_metrics(np.ones((2, 4, 4)), np.random.default_rng(8).random((2, 4, 4)))
    assert math.isnan(out["auroc"])
    assert math.isnan(out["aupro"])
    assert out["ap"] == out["f1_max"] == out["iou_max"] == 1.0


def test_pixel_metrics_validation() -> None:
    with pytest.raises(ValueError, match=r"\(2, 4, 4\).*\(2, 4, 5\)"):
        pixel_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        pixel_metrics(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="0 and 1"):
        pixel_metrics(np.full((1, 2, 2), 255, dtype=np.uint8), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        pixel_metrics(np.ones((1, 2, 2)), np.full((1, 2, 2), np.inf))
