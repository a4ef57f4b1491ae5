"""The HeadCLIP artifact file: round trip, integrity check, and clear errors on misuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from zsad.errors import ZsadError
from zsad.formats.artifact import (
    LEGACY_FORMAT,
    HeadclipArtifact,
    _digest,
    load_artifact,
    save_artifact,
)
from zsad.formats.local_path import LocalPath


def _artifact() -> HeadclipArtifact:
    rng = np.random.default_rng(0)
    text = rng.standard_normal((2, 64)).astype(np.float32)
    return HeadclipArtifact(
        text_embeddings=text / np.linalg.norm(text, axis=1, keepdims=True),
        head_weights=rng.random((5, 4)).astype(np.float32),
        backbone="zsad-tiny",
        image_size=112,
        local_path=LocalPath("residual", (2, 3, 4, 5, 6), (4, 6)),
        hyperparameters={"jas_r": 0.5, "top_k": 1.0, "epoch_losses": [2.0, 1.5]},
        extra={"prompts.ctx": rng.random((2, 12, 64)).astype(np.float32)},
    )


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.safetensors"
    original = _artifact()
    digest = save_artifact(path, original)
    assert len(digest) == 64
    assert [p.name for p in path.parent.iterdir()] == ["a.safetensors"]  # no temporary left
    loaded = load_artifact(path, backbone="zsad-tiny", image_size=112)
    np.testing.assert_array_equal(loaded.text_embeddings, original.text_embeddings)
    np.testing.assert_array_equal(loaded.head_weights, original.head_weights)
    np.testing.assert_array_equal(loaded.extra["prompts.ctx"], original.extra["prompts.ctx"])
    assert loaded.backbone == "zsad-tiny" and loaded.image_size == 112
    assert loaded.local_path == LocalPath("residual", (2, 3, 4, 5, 6), (4, 6))
    assert loaded.hyperparameters == original.hyperparameters


def test_an_artifact_from_before_the_local_path_variants_loads_as_the_sum(tmp_path: Path) -> None:
    # The first format had no local-path fields: its head weights were trained on the CSA sum,
    # read once after the last CSA block.
    original = _artifact()
    tensors = {"text_embeddings": original.text_embeddings, "head_weights": original.head_weights}
    meta = {
        "format": LEGACY_FORMAT,
        "backbone": "zsad-tiny",
        "image_size": "112",
        "csa_layers": "2,3,4,5,6",
        "hyperparameters": json.dumps(original.hyperparameters),
    }
    path = tmp_path / "old.safetensors"
    save_file(tensors, str(path), metadata={**meta, "sha256": _digest(tensors, meta)})
    loaded = load_artifact(path)
    assert loaded.local_path == LocalPath("sum", (2, 3, 4, 5, 6), (6,))
    np.testing.assert_array_equal(loaded.head_weights, original.head_weights)


def test_mismatched_backbone_or_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    save_artifact(path, _artifact())
    with pytest.raises(ZsadError, match="made for backbone zsad-tiny, not ViT-L-14-336"):
        load_artifact(path, backbone="ViT-L-14-336")
    with pytest.raises(ZsadError, match="made for image size 112, not 518"):
        load_artifact(path, image_size=518)


def test_tampered_files_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    save_artifact(path, _artifact())
    data = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")

    flipped = bytearray(data)
    flipped[-3] ^= 0x40  # a bit inside the last tensor's data
    (tmp_path / "flipped.safetensors").write_bytes(flipped)
    with pytest.raises(ZsadError, match="checksum mismatch"):
        load_artifact(tmp_path / "flipped.safetensors")

    header = json.loads(data[8:header_end])
    header["__metadata__"]["image_size"] = "518"
    edited = json.dumps(header).encode()
    (tmp_path / "edited.safetensors").write_bytes(
        len(edited).to_bytes(8, "little") + edited + data[header_end:]
    )
    with pytest.raises(ZsadError, match="checksum mismatch"):
        load_artifact(tmp_path / "edited.safetensors")

    (tmp_path / "short.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ZsadError, match="not a safetensors artifact"):
        load_artifact(tmp_path / "short.safetensors")


def test_other_files_are_rejected_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ZsadError, match="no such file"):
        load_artifact(tmp_path / "missing.safetensors")
    other = tmp_path / "weights.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(other))
    with pytest.raises(ZsadError, match="not a zsad HeadCLIP artifact") as info:
        load_artifact(other)
    assert "\n" not in str(info.value)
