"""What an image is, independent of where it was listed: a digest of its content.

A set's scores must not depend on the order its images were given in, so every order the scoring
uses (the encoding order, STAS's pseudo-time, the split into subsets) is derived from these
digests. A file's digest is that of its bytes (read in blocks, never decoded); pixels given in
Python hash their shape and bytes; a PIL image its mode, size and bytes. A file that cannot be
read hashes its path, so it still has a place (it fails again when decoded).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from PIL import Image

from zsad.data.images import ImageInput

_BLOCK = 1 << 20


def content_key(image: ImageInput) -> str:
    """A hex SHA-256 digest of an image's content (see the module docstring)."""
    digest = hashlib.sha256()
    if isinstance(image, (str, os.PathLike)):
        try:
            with open(image, "rb") as handle:
                while block := handle.read(_BLOCK):
                    digest.update(block)
        except OSError:
            digest = hashlib.sha256(b"unreadable:" + os.fsencode(image))
    elif isinstance(image, Image.Image):
        digest.update(f"{image.mode}{image.size}".encode())
        digest.update(image.tobytes())
    else:
        pixels = np.ascontiguousarray(image)
        digest.update(f"{pixels.dtype}{pixels.shape}".encode())
        digest.update(pixels.tobytes())
    return digest.hexdigest()
