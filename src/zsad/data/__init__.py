"""zsad.data: dataset readers, robust image loading, synthetic defect data."""

from __future__ import annotations

from zsad.data.datasets import (
    Sample,
    list_categories,
    read_folder,
    read_labelled_folder,
    read_mvtec,
)
from zsad.data.images import IMAGE_EXTENSIONS, ImageLoadError, is_image_file, load_image, load_mask
from zsad.data.synthetic import DEFECT_TYPES, SYNTHETIC_CATEGORIES, make_dataset, render_sample

__all__ = [
    "DEFECT_TYPES",
    "IMAGE_EXTENSIONS",
    "SYNTHETIC_CATEGORIES",
    "ImageLoadError",
    "Sample",
    "is_image_file",
    "list_categories",
    "load_image",
    "load_mask",
    "make_dataset",
    "read_folder",
    "read_labelled_folder",
    "read_mvtec",
    "render_sample",
]
