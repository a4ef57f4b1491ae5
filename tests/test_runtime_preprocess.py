"""NumPy/Pillow preprocessing and map upsampling against the torch implementations they mirror."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from zsad.api.overlay import colorize, overlay
from zsad.runtime.preprocess import OPENAI_MEAN, OPENAI_STD, preprocess_batch, preprocess_image
from zsad.scoring.maps import patch_grid, upsample_maps


def test_normalisation_constants_are_open_clips() -> None:
    assert OPENAI_MEAN == open_clip.OPENAI_DATASET_MEAN
    assert OPENAI_STD == open_clip.OPENAI_DATASET_STD


@pytest.mark.parametrize("shape", [(300, 200, 3), (518, 518, 3), (64, 97, 3)])
def test_preprocess_matches_torchvision_within_1e3(shape: tuple[int, int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    reference = transforms.Compose(
        [
            transforms.Resize((518, 518), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(OPENAI_MEAN, OPENAI_STD),
        ]
    )(Image.fromarray(image))
    ours = preprocess_image(image, 518)
    assert ours.dtype == np.float32 and ours.shape == (3, 518, 518)
    np.testing.assert_allclose(ours, reference.numpy(), atol=1e-3)
    assert preprocess_batch([image, image], 518).shape == (2, 3, 518, 518)


def test_upsampling_is_bilinear_with_align_corners() -> None:
    maps = np.random.default_rng(1).random((3, 7, 7), dtype=np.float32)
    ours = upsample_maps(maps, 50, 38)
    reference = F.interpolate(
        torch.from_numpy(maps)[:, None], size=(50, 38), mode="bilinear", align_corners=True
    )[:, 0]
    np.testing.assert_allclose(ours, reference.numpy(), atol=1e-5)
    assert ours[:, 0, 0].tolist() == maps[:, 0, 0].tolist()
    assert patch_grid(maps.reshape(3, 49)).shape == (3, 7, 7)
    with pytest.raises(ValueError, match="square"):
        patch_grid(np.zeros((2, 50)))


def test_overlay_heats_the_anomalous_region() -> None:
    image = np.full((40, 60, 3), 128, np.uint8)
    heat = np.zeros((4, 6), np.float32)
    heat[1, 4] = 1.0
    out = overlay(image, heat, 0.0, 1.0)
    assert out.shape == image.shape and out.dtype == np.uint8
    hot, cold = out[15, 45].astype(int), out[35, 5].astype(int)
    assert hot[0] > hot[2] and cold[2] > cold[0]  # red where anomalous, blue where normal
    assert colorize(np.array([0.0, 1.0])).shape == (2, 3)
