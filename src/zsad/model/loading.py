"""Build backbones: open_clip CLIP models and the DINO/DINOv2 ViTs MuSc runs, from pretrained
tags, local weight files, or seeded random weights (the tiny test model, timing runs)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from zsad.errors import ZsadError
from zsad.formats.backbones import ARCHITECTURES, RELEASE_TAG, VitArch, get_arch
from zsad.formats.local_path import LocalPath
from zsad.formats.methods import METHODS
from zsad.model.checkpoints import check_weights_file, read_tensors, vit_from_tensors
from zsad.model.encoder import OUTPUTS, DualPathEncoder
from zsad.model.vit import TapEncoder, VisionTransformer

TINY_MODEL = "zsad-tiny"
DEFAULT_MODEL = "ViT-L-14-336"
RANDOM = "random"
_CONFIG_DIR = Path(__file__).with_name("configs")

open_clip.add_model_config(_CONFIG_DIR)


def supported_models() -> list[dict[str, Any]]:
    """The architectures zsad can run, from their configs (nothing is built): open_clip models
    with a CLS-token ViT image tower (no timm towers, no attention pooling, no CoCa), then the
    DINO/DINOv2 backbones (training-free methods only: HeadCLIP needs open_clip's own text
    transformer for its prompts)."""
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
    for arch in ARCHITECTURES.values():
        models.append(
            {
                "name": arch.name,
                "patch_size": arch.patch_size,
                "image_size": arch.default_image_size,
                "methods": [m.name for m in METHODS.values() if not m.needs_calibration],
                "pretrained": [RELEASE_TAG],
            }
        )
    return models


def clip_image_size(model: str, default: int) -> int:
    """The input size open_clip's config gives ``model``, else ``default``."""
    config = open_clip.get_model_config(model) or {}
    size = config.get("vision_cfg", {}).get("image_size", default)
    return int(size[0] if isinstance(size, list | tuple) else size)


def default_tag(model_name: str) -> str:
    """The --pretrained tag used when none is given: the model's standard release."""
    return RELEASE_TAG if get_arch(model_name) is not None else "openai"


def load_backbone(
    model_name: str,
    *,
    weights: str | Path | None = None,
    pretrained: str | None = None,
    seed: int = 0,
) -> nn.Module:
    """An open_clip CLIP model or a DINO/DINOv2 ViT in eval mode; ``pretrained`` None takes the
    model's standard release (see :func:`load_clip` for the order of the sources)."""
    arch = get_arch(model_name)
    if arch is None:
        return load_clip(model_name, weights=weights, pretrained=pretrained, seed=seed)
    if weights is not None:
        where = f"--weights {weights}"
        return vit_from_tensors(arch, read_tensors(Path(weights)), where)
    if pretrained == RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return VisionTransformer(arch).eval()
    tag = pretrained or RELEASE_TAG
    if tag != RELEASE_TAG:
        raise ZsadError(
            f"--pretrained {tag!r}: not a known tag for {model_name} (known: {RELEASE_TAG}; "
            "or --weights FILE)"
        )
    return _released_vit(arch)


def build_encoder(
    backbone: nn.Module,
    *,
    image_size: int,
    taps: tuple[int, ...] | None = None,
    local_path: LocalPath | None = None,
    outputs: tuple[str, ...] = OUTPUTS,
) -> DualPathEncoder | TapEncoder:
    """The encoder over a loaded backbone: a DualPathEncoder for CLIP, a TapEncoder for DINO."""
    if isinstance(backbone, VisionTransformer):
        return TapEncoder(backbone, image_size=image_size, taps=taps, outputs=outputs)
    return DualPathEncoder(
        backbone, image_size=image_size, taps=taps, local_path=local_path, outputs=outputs
    )


def _released_vit(arch: VitArch) -> VisionTransformer:
    try:
        state = torch.hub.load_state_dict_from_url(
            arch.url, map_location="cpu", weights_only=True, progress=True
        )
    except Exception as exc:  # network, cache and hub errors all mean the same to a user
        raise _download_error(RELEASE_TAG, arch.name, arch.url, exc) from exc
    return vit_from_tensors(arch, state, f"--pretrained {RELEASE_TAG} ({arch.url})")


def load_clip(
    model_name: str = DEFAULT_MODEL,
    *,
    weights: str | Path | None = None,
    pretrained: str | None = None,
    seed: int = 0,
) -> open_clip.CLIP:
    """Return an open_clip CLIP model in eval mode from a weight file, a pretrained tag or by name.

    Sources, in order: ``weights`` (a local safetensors or state-dict file); random init when the
    model is ``zsad-tiny`` or ``pretrained == "random"`` (seeded, only when asked for by name);
    otherwise open_clip's ``pretrained`` tag, ``openai`` when None (downloads or uses its cache).
    """
    dino = get_arch(model_name)
    if dino is not None:
        raise ZsadError(dino.headclip_refusal)
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
    else:
        model = _pretrained_model(model_name, pretrained or "openai")
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
        raise _download_error(tag, model_name, "them", exc) from exc


def _download_error(tag: str, model_name: str, what: str, exc: Exception) -> ZsadError:
    text = str(exc).strip()
    first_line = text.splitlines()[0] if text else type(exc).__name__
    return ZsadError(
        f"--pretrained {tag}: could not load {model_name} weights ({first_line}); on an offline "
        f"machine download {what} elsewhere and pass --weights FILE"
    )


def _load_weights(model: open_clip.CLIP, path: Path) -> None:
    check_weights_file(path)
    try:
        # open_clip reads safetensors, or torch.load(weights_only=True) for anything else.
        open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
    except Exception as exc:
        message = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ZsadError(
            f"--weights {path}: not a usable checkpoint for this model ({message})"
        ) from exc
