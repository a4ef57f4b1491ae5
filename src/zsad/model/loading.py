"""Build open_clip models: pretrained tags, local weight files, or the seeded tiny test model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import open_clip
import torch

from zsad.errors import ZsadError
from zsad.formats.methods import METHODS

TINY_MODEL = "zsad-tiny"
DEFAULT_MODEL = "ViT-L-14-336"
RANDOM = "random"
_CONFIG_DIR = Path(__file__).with_name("configs")

open_clip.add_model_config(_CONFIG_DIR)


def supported_models() -> list[dict[str, Any]]:
    """The open_clip architectures zsad can run, from their configs (nothing is built): a
    CLS-token ViT image tower (no timm towers, no attention pooling, no CoCa); HeadCLIP also
    needs open_clip's own text transformer for its prompts."""
    tags: dict[str, list[str]] = {}
    for name, tag in open_clip.list_pretrained():
        tags.setdefault(name, []).append(tag)
    models = []
    for name in open_clip.list_models():
        config = open_clip.get_model_config(name) or {}
        vision = config.get("vision_cfg", {})
        unsupported = (
            vision.get("timm_model_name")
            or "multimodal_cfg" in config
            or vision.get("attentional_pool")
            or vision.get("pool_type", "tok") != "tok"
            or vision.get("global_average_pool")
            or vision.get("final_ln_after_pool")
            or not vision.get("patch_size")
        )
        if unsupported:
            continue
        text_is_open_clip = not config.get("text_cfg", {}).get("hf_model_name")
        size = vision.get("image_size", 224)
        models.append(
            {
                "name": name,
                "patch_size": vision["patch_size"],
                "image_size": size[0] if isinstance(size, list | tuple) else size,
                "methods": [
                    m.name for m in METHODS.values() if text_is_open_clip or not m.needs_calibration
                ],
                "pretrained": sorted(tags.get(name, [])),
            }
        )
    return models


def load_clip(
    model_name: str = DEFAULT_MODEL,
    *,
    weights: str | Path | None = None,
    pretrained: str | None = "openai",
    seed: int = 0,
) -> open_clip.CLIP:
    """Return an open_clip CLIP model in eval mode from a weight file, a pretrained tag or by name.

    Sources, in order: ``weights`` (a local safetensors or state-dict file); random init when the
    model is ``zsad-tiny`` or ``pretrained == "random"`` (seeded, only when asked for by name);
    otherwise open_clip's ``pretrained`` tag (downloads or uses its cache).
    """
    if model_name not in open_clip.list_models():
        raise ZsadError(
            f"--model {model_name!r}: unknown architecture (e.g. {DEFAULT_MODEL}, ViT-B-16, "
            f"{TINY_MODEL}; `zsad models` lists them)"
        )
    if weights is not None:
        model = _random_model(model_name, seed)
        _load_weights(model, Path(weights))
    elif model_name == TINY_MODEL or pretrained == RANDOM:
        model = _random_model(model_name, seed)
    elif pretrained is None:
        raise ZsadError(
            f"--model {model_name}: no weights given (use --weights FILE or --pretrained)"
        )
    else:
        model = _pretrained_model(model_name, pretrained)
    return model.eval()


def _random_model(model_name: str, seed: int) -> open_clip.CLIP:
    # open_clip warns on the root logger about random init; here it is always intended.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return open_clip.create_model(model_name, pretrained=None, device="cpu")
    finally:
        root.setLevel(level)


def _pretrained_model(model_name: str, tag: str) -> open_clip.CLIP:
    known = {t for name, t in open_clip.list_pretrained() if name == model_name}
    if tag not in known:
        options = ", ".join(sorted(known)) or "none"
        raise ZsadError(
            f"--pretrained {tag!r}: not a known tag for {model_name} (known: {options}; or "
            f"--weights FILE)"
        )
    try:
        return open_clip.create_model(model_name, pretrained=tag, device="cpu")
    except Exception as exc:  # network, cache and hub errors all mean the same to a user
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ZsadError(
            f"--pretrained {tag}: could not load {model_name} weights ({first_line}); on an "
            f"offline machine download them elsewhere and pass --weights FILE"
        ) from exc


def _load_weights(model: open_clip.CLIP, path: Path) -> None:
    if not path.is_file():
        raise ZsadError(f"--weights {path}: no such file")
    if path.stat().st_size == 0:
        raise ZsadError(f"--weights {path}: file is empty")
    try:
        # open_clip reads safetensors, or torch.load(weights_only=True) for anything else.
        open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
    except Exception as exc:
        message = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ZsadError(
            f"--weights {path}: not a usable checkpoint for this model ({message})"
        ) from exc
