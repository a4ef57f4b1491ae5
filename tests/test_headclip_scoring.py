"""HeadCLIP scoring: the NumPy functions, their torch twins, and the reference operations."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from zsad.errors import ZsadError
from zsad.model.headclip import anomaly_maps, gaussian_blur, global_scores, joint_scores
from zsad.scoring.headclip import global_scores as np_global_scores
from zsad.scoring.headclip import (
    headclip_maps,
    jas,
    resize_matrix,
    score_headclip,
    top_k_count,
)


def _unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("n_out", [98, 112, 518, 50, 7, 3])
def test_resize_matrix_is_torch_bilinear_without_corner_alignment(n_out: int) -> None:
    grid = np.random.default_rng(0).random((2, 7, 7), dtype=np.float32)
    matrix = resize_matrix(7, n_out)
    ours = matrix @ grid @ matrix.T
    ref = F.interpolate(
        torch.from_numpy(grid)[:, None], size=(n_out, n_out), mode="bilinear", align_corners=False
    )[:, 0]
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "sigma"), [((2, 56, 56), 4.0), ((1, 20, 37), 4.0), ((1, 9, 9), 1.5)]
)
def test_torch_blur_is_scipy_gaussian_filter(shape: tuple[int, ...], sigma: float) -> None:
    # The 9x9 case is narrower than the kernel radius: reflection must fold more than once.
    maps = np.random.default_rng(1).random(shape)
    ours = gaussian_blur(torch.from_numpy(maps), sigma).numpy()
    ref = ndimage.gaussian_filter(maps, sigma=(0, sigma, sigma), mode="reflect")
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_maps_follow_the_paper_formula() -> None:
    rng = np.random.default_rng(2)
    local = _unit(rng, 3, 1, 16, 8)
    text = _unit(rng, 2, 8)
    maps = headclip_maps(local, text, image_size=None, sigma=0)
    logits = local[:, 0] @ text.T / 0.07
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = ((1 - probs[..., 0] + probs[..., 1]) / 2).reshape(3, 4, 4)
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
    assert headclip_maps(local, text, image_size=56).shape == (3, 56, 56)
    # Swapping the prompts turns every score into its complement.
    np.testing.assert_allclose(
        headclip_maps(local, text[::-1], image_size=None, sigma=0), 1 - maps, atol=1e-6
    )
    with pytest.raises(ValueError, match=r"expected \(N, L, P, D\)"):
        headclip_maps(local[:, 0], text)


def test_several_readouts_give_one_map_each_averaged() -> None:
    rng = np.random.default_rng(5)
    local, text = _unit(rng, 2, 3, 16, 8), _unit(rng, 2, 8)
    maps = headclip_maps(local, text, image_size=40)
    each = [headclip_maps(local[:, [layer]], text, image_size=40) for layer in range(3)]
    np.testing.assert_allclose(maps, np.mean(each, axis=0), atol=1e-6)
    assert np.abs(each[0] - each[1]).max() > 1e-3  # the read-outs really differ


def test_jas_mixes_global_and_top_k_mean() -> None:
    maps = np.zeros((2, 10, 10), np.float32)
    maps[0, :2, :] = 1.0  # top 20 % of image 0 is all ones
    maps[1, 0, :5] = 0.5
    global_score = np.array([0.2, 0.9], np.float32)
    assert top_k_count(100, 1.0) == 1 and top_k_count(100, 20.0) == 20
    assert top_k_count(268324, 1.0) == 2684
    np.testing.assert_allclose(jas(global_score, maps, r=0.5, top_k=20.0), [0.6, 0.5125])
    np.testing.assert_allclose(jas(global_score, maps, r=1.0, top_k=20.0), global_score)
    np.testing.assert_allclose(jas(global_score, maps, r=0.0, top_k=1.0), [1.0, 0.5])
    with pytest.raises(ValueError, match="percentage"):
        jas(global_score, maps, top_k=0)
    with pytest.raises(ValueError, match="ratio"):
        jas(global_score, maps, r=1.5)


def test_global_score_is_the_abnormal_probability() -> None:
    text = np.eye(2, 4, dtype=np.float32)
    cls = np.array([[1, 0, 0, 0], [0, 1, 0, 0]], np.float32)
    scores = np_global_scores(cls, text)
    assert scores[0] < 1e-6 and scores[1] > 1 - 1e-6
    with pytest.raises(ValueError, match="expected"):
        np_global_scores(cls, np.eye(3, 4, dtype=np.float32))


def test_torch_and_numpy_scoring_agree_on_the_same_tokens() -> None:
    rng = np.random.default_rng(3)
    cls, local, text = _unit(rng, 4, 16), _unit(rng, 4, 2, 64, 16), _unit(rng, 2, 16)
    scores, maps = score_headclip(cls, local, text, image_size=112, r=0.3, top_k=2.0)

    text_t = torch.from_numpy(text)
    maps_t = anomaly_maps(torch.from_numpy(local) @ text_t.T / 0.07, 112)
    global_t = global_scores(torch.from_numpy(cls) @ text_t.T / 0.07)
    scores_t = joint_scores(global_t, maps_t, r=0.3, top_k=2.0)
    np.testing.assert_allclose(maps_t.numpy(), maps, atol=1e-5)
    np.testing.assert_allclose(scores_t.numpy(), scores, atol=1e-5)


def _legacy_scoring(text: np.ndarray) -> tuple[Any, Any]:
    """A HeadCLIP artifact whose local path predates read-out blocks, and its scoring."""
    from zsad.api.scorers import HeadclipScoring, MethodOptions
    from zsad.formats.artifact import HeadclipArtifact
    from zsad.formats.local_path import LocalPath

    artifact = HeadclipArtifact(
        text_embeddings=text,
        head_weights=np.ones((3, 2), np.float32),
        backbone="zsad-tiny",
        image_size=56,
        local_path=LocalPath.legacy((2, 3, 4)),
        hyperparameters={"jas_r": 0.5, "top_k": 1.0, "temperature": 0.07, "sigma": 4.0},
    )
    return artifact, HeadclipScoring.from_artifact(artifact, 56, MethodOptions())


def test_a_legacy_bundle_local_output_scores_as_one_readout() -> None:
    # Bundles exported before read-out blocks output local tokens as (N, P, D).
    rng = np.random.default_rng(7)
    cls, local, text = _unit(rng, 2, 8), _unit(rng, 2, 16, 8), _unit(rng, 2, 8)
    artifact, scoring = _legacy_scoring(text)
    scores, maps = scoring(cls, local)
    expected_scores, expected_maps = score_headclip(cls, local[:, None], text, image_size=56)
    np.testing.assert_array_equal(maps, expected_maps)
    np.testing.assert_array_equal(scores, expected_scores)
    from zsad.api.scorers import HeadclipScoring, MethodOptions

    with pytest.raises(ZsadError, match="--readout-layers 3: the calibration artifact was"):
        HeadclipScoring.from_artifact(artifact, 56, MethodOptions(readout_layers=(3,)))


class _OnDevice:
    """A stand-in GPU array: the CUDA array interface and ``get()``, and no NumPy conversion."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array
        self.__cuda_array_interface__ = {"shape": array.shape, "data": (0, False)}

    def get(self) -> np.ndarray:
        return self._array


def test_outputs_left_on_the_gpu_are_scored_like_host_outputs() -> None:
    rng = np.random.default_rng(8)
    cls, local, text = _unit(rng, 2, 8), _unit(rng, 2, 1, 16, 8), _unit(rng, 2, 8)
    _, scoring = _legacy_scoring(text)
    scores, maps = scoring(_OnDevice(cls), _OnDevice(local))
    expected_scores, expected_maps = scoring(cls, local)
    np.testing.assert_array_equal(maps, expected_maps)
    np.testing.assert_array_equal(scores, expected_scores)
