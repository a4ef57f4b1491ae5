"""The HeadCLIP calibration artifact: safetensors tensors + JSON metadata, readable without torch.

It holds what zero-shot inference needs (the two final text embeddings and the learned head
weights) plus the learned prompt tensors, and a SHA-256 over all of it so that a tampered or
truncated file is rejected instead of giving wrong scores. It records the local path the head
weights were trained with (:mod:`zsad.formats.local_path`); a file in the first format, written
before the variants existed, loads as the variant it was trained with: the CSA sum, read once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from zsad.errors import ZsadError
from zsad.formats.atomic import atomic_open
from zsad.formats.local_path import LocalPath

FORMAT = "zsad-headclip/2"
LEGACY_FORMAT = "zsad-headclip/1"  # no local-path fields: the CSA sum, read after the last block
TEXT_EMBEDDINGS = "text_embeddings"
HEAD_WEIGHTS = "head_weights"


@dataclass(frozen=True)
class HeadclipArtifact:
    """Learned HeadCLIP state; text_embeddings rows are (normal, abnormal), L2-normalised."""

    text_embeddings: np.ndarray  # (2, D_embed) float32
    head_weights: np.ndarray  # (n_csa_layers, n_heads) float32
    backbone: str
    image_size: int
    local_path: LocalPath
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # prompt tensors, for resuming


def _digest(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
        h.update(array.tobytes())
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def save_artifact(path: str | os.PathLike[str], artifact: HeadclipArtifact) -> str:
    """Write the artifact atomically; returns its SHA-256."""
    path = Path(path)
    tensors = {
        TEXT_EMBEDDINGS: np.asarray(artifact.text_embeddings, np.float32),
        HEAD_WEIGHTS: np.asarray(artifact.head_weights, np.float32),
        **{f"extra.{k}": np.asarray(v) for k, v in artifact.extra.items()},
    }
    meta = {
        "format": FORMAT,
        "backbone": artifact.backbone,
        "image_size": str(artifact.image_size),
        "local_path": artifact.local_path.kind,
        "csa_layers": ",".join(str(i) for i in artifact.local_path.csa_layers),
        "readout_layers": ",".join(str(i) for i in artifact.local_path.readout_layers),
        "hyperparameters": json.dumps(artifact.hyperparameters, sort_keys=True),
    }
    digest = _digest(tensors, meta)
    with atomic_open(path, "wb") as handle:
        handle.write(save(tensors, metadata={**meta, "sha256": digest}))
    return digest


def load_artifact(
    path: str | os.PathLike[str],
    *,
    backbone: str | None = None,
    image_size: int | None = None,
) -> HeadclipArtifact:
    """Read and verify an artifact; a mismatch with the expected backbone/size is an error."""
    path = Path(path)
    if not path.is_file():
        raise ZsadError(f"--calibration {path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ZsadError(f"--calibration {path}: unreadable ({exc})") from exc
    artifact = parse_artifact(data, f"--calibration {path}")
    if backbone is not None and backbone != artifact.backbone:
        raise ZsadError(
            f"--calibration {path}: made for backbone {artifact.backbone}, not {backbone}"
        )
    if image_size is not None and image_size != artifact.image_size:
        raise ZsadError(
            f"--calibration {path}: made for image size {artifact.image_size}, not {image_size}"
        )
    return artifact


def parse_artifact(data: bytes, where: str) -> HeadclipArtifact:
    """Verify and read an artifact's bytes (a file, or a copy an inference server carries)."""
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
    except (SafetensorError, ValueError) as exc:
        raise ZsadError(f"{where}: not a safetensors artifact ({exc})") from exc
    if meta.get("format") not in (FORMAT, LEGACY_FORMAT):
        raise ZsadError(f"{where}: not a zsad HeadCLIP artifact (format {meta.get('format')!r})")
    stored = meta.pop("sha256", None)
    if stored != _digest(tensors, meta):
        raise ZsadError(f"{where}: checksum mismatch (file altered or corrupt)")
    csa = _layers(meta["csa_layers"])
    if meta["format"] == LEGACY_FORMAT:
        local_path = LocalPath.legacy(csa)
    else:
        local_path = LocalPath(meta["local_path"], csa, _layers(meta["readout_layers"]))
    return HeadclipArtifact(
        text_embeddings=tensors.pop(TEXT_EMBEDDINGS),
        head_weights=tensors.pop(HEAD_WEIGHTS),
        backbone=meta["backbone"],
        image_size=int(meta["image_size"]),
        local_path=local_path,
        hyperparameters=json.loads(meta["hyperparameters"]),
        extra={k.removeprefix("extra."): v for k, v in tensors.items()},
    )


def _layers(text: str) -> tuple[int, ...]:
    return tuple(int(i) for i in text.split(",") if i)
