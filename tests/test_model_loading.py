"""Model loading: weight files, the seeded tiny model, and clear errors for every missing source."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from zsad.errors import ZsadError
from zsad.model import load_clip


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_model_is_seeded() -> None:
    assert _same_weights(load_clip("zsad-tiny", seed=5), load_clip("zsad-tiny", seed=5))
    assert not _same_weights(load_clip("zsad-tiny", seed=5), load_clip("zsad-tiny", seed=6))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_file_round_trips(tmp_path: Path, suffix: str) -> None:
    source = load_clip("zsad-tiny", seed=7)
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = load_clip("zsad-tiny", weights=path, seed=0)
    assert _same_weights(source, loaded)


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ZsadError, match="no such file"):
        load_clip("zsad-tiny", weights=tmp_path / "nope.safetensors")


def test_empty_or_garbage_weights_are_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(ZsadError, match="empty"):
        load_clip("zsad-tiny", weights=empty)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ZsadError, match="not a usable checkpoint"):
        load_clip("zsad-tiny", weights=garbage)


def test_weights_for_another_architecture_are_rejected(tmp_path: Path) -> None:
    state = {k: v.contiguous() for k, v in load_clip("zsad-tiny").state_dict().items()}
    state.pop("visual.proj")
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(ZsadError, match="not a usable checkpoint"):
        load_clip("zsad-tiny", weights=path)


def test_unknown_model_and_tag_are_clear_errors() -> None:
    with pytest.raises(ZsadError, match="unknown architecture"):
        load_clip("ViT-Q-99")
    with pytest.raises(ZsadError, match="not a known tag"):
        load_clip("ViT-B-16", pretrained="no-such-tag")
    with pytest.raises(ZsadError, match="without a CLIP text tower"):
        load_clip("dinov2_vits14")
