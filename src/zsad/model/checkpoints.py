"""DINO/DINOv2 checkpoints in the layouts people download, loaded into one VisionTransformer.

Layouts: the official torch hub ``.pth`` state dicts (the module's own names), timm's
``vit_*_patch14_dinov2`` / ``vit_*.dino`` weights (the same names, a packed SwiGLU called
``fc1``/``fc2``), and HuggingFace ``Dinov2Model`` ``model.safetensors`` (separate q/k/v). A
prefix such as ``backbone.`` or ``module.`` is found and dropped. Files are read with
safetensors or ``torch.load(weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from zsad.errors import ZsadError
from zsad.formats.backbones import VitArch
from zsad.model.vit import VisionTransformer

_WRAPPERS = ("state_dict", "model", "teacher", "module")
_HF_BLOCK = {
    "norm1": "norm1",
    "attention.output.dense": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12",
    "mlp.weights_out": "mlp.w3",
    "layer_scale2.lambda1": "ls2.gamma",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_QKV = ("query", "key", "value")


def vit_from_tensors(
    arch: VitArch, state: Mapping[str, torch.Tensor], where: str
) -> VisionTransformer:
    """Build ``arch`` with a checkpoint's tensors; one-line errors start with ``where`` and name
    the first missing or misshapen tensor."""
    layout, tensors = to_module_names(state, arch, where)
    pos = tensors.get("pos_embed")
    grid = _pos_grid(pos, arch, where) if pos is not None else arch.pos_grid
    vit = VisionTransformer(arch, pos_grid=grid)
    expected = vit.state_dict()
    for name, like in expected.items():
        if name not in tensors:
            raise ZsadError(
                f"{where}: not a complete {arch.name} checkpoint ({layout} layout): no tensor "
                f"{_source_name(name, layout)}"
            )
        got = tuple(tensors[name].shape)
        if got != tuple(like.shape):
            raise ZsadError(
                f"{where}: {_source_name(name, layout)} has shape {got}, {arch.name} needs "
                f"{tuple(like.shape)} (a checkpoint of another model?)"
            )
    depth = _depth(tensors)
    if depth != arch.depth:
        raise ZsadError(f"{where}: a checkpoint with {depth} blocks; {arch.name} has {arch.depth}")
    vit.load_state_dict({k: tensors[k].float() for k in expected}, strict=True)
    return vit.eval()


def check_weights_file(path: Path) -> None:
    """Fail in one line when --weights names no file or an empty one."""
    if not path.is_file():
        raise ZsadError(f"--weights {path}: no such file")
    if path.stat().st_size == 0:
        raise ZsadError(f"--weights {path}: file is empty")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The named tensors of a .safetensors file or a torch state dict (weights only)."""
    where = f"--weights {path}"
    check_weights_file(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise ZsadError(f"{where}: not a readable safetensors file ({_first(exc)})") from exc
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ZsadError(
            f"{where}: not a readable checkpoint (safetensors, or a torch state dict loadable "
            f"with weights_only=True: {_first(exc)})"
        ) from exc
    while isinstance(loaded, Mapping):
        inner = next((loaded[k] for k in _WRAPPERS if isinstance(loaded.get(k), Mapping)), None)
        if inner is None:
            break
        loaded = inner
    if not isinstance(loaded, Mapping):
        raise ZsadError(f"{where}: holds a {type(loaded).__name__}, not a state dict")
    return {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def to_module_names(
    state: Mapping[str, torch.Tensor], arch: VitArch, where: str
) -> tuple[str, dict[str, torch.Tensor]]:
    """(layout, tensors renamed to :class:`VisionTransformer`'s parameter names)."""
    keys = list(state)
    hf = next((k for k in keys if k.endswith("embeddings.cls_token")), None)
    if hf is not None:
        prefix = hf[: -len("embeddings.cls_token")]
        own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        return "HuggingFace Dinov2", _from_huggingface(own)
    plain = next((k for k in keys if k.endswith("cls_token")), None)
    if plain is None:
        raise ZsadError(f"{where}: {_what_else(keys, arch)}")
    prefix = plain[: -len("cls_token")]
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if "register_tokens" in own or "reg_token" in own:
        raise ZsadError(f"{where}: a ViT with register tokens; zsad runs {arch.name} without")
    if arch.ffn == "swiglu":
        # timm packs SwiGLU's two input branches as fc1 and calls the output fc2.
        own = {re.sub(r"\.mlp\.fc1\.", ".mlp.w12.", k): v for k, v in own.items()}
        own = {re.sub(r"\.mlp\.fc2\.", ".mlp.w3.", k): v for k, v in own.items()}
    return "torch hub / timm", own


def _from_huggingface(own: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {_HF_TOP[k]: v for k, v in own.items() if k in _HF_TOP}
    pattern = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in own.items():
        match = pattern.match(key)
        if match is None:
            continue
        index, inner, kind = match.groups()
        if inner.startswith("attention.attention."):
            part = inner.rsplit(".", 1)[-1]
            qkv.setdefault((index, kind), {})[part] = value
            continue
        name = f"{inner}.{kind}" if kind == "lambda1" else inner
        if name in _HF_BLOCK:
            suffix = "" if kind == "lambda1" else f".{kind}"
            out[f"blocks.{index}.{_HF_BLOCK[name]}{suffix}"] = value
    for (index, kind), parts in qkv.items():
        if all(p in parts for p in _QKV):
            out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts[p] for p in _QKV])
    return out


def _source_name(name: str, layout: str) -> str:
    """A module parameter's name as the checkpoint's layout spells it (for messages)."""
    if not layout.startswith("HuggingFace"):
        return name
    top = {v: k for k, v in _HF_TOP.items()}
    if name in top:
        return top[name]
    match = re.match(r"blocks\.(\d+)\.(.+)$", name)
    if match is None:
        return name
    index, inner = match.groups()
    if inner.startswith("attn.qkv."):
        kind = inner.rsplit(".", 1)[-1]
        return f"encoder.layer.{index}.attention.attention.{{query,key,value}}.{kind}"
    for hf, ours in _HF_BLOCK.items():
        if inner.startswith(ours):
            rest = inner[len(ours) :]
            return f"encoder.layer.{index}.{hf}{rest}"
    return name


def _pos_grid(pos: torch.Tensor, arch: VitArch, where: str) -> int:
    tokens = pos.shape[-2] - 1 if pos.dim() == 3 else -1
    grid = math.isqrt(max(tokens, 0))
    if pos.dim() != 3 or grid * grid != tokens or pos.shape[-1] != arch.width:
        raise ZsadError(
            f"{where}: positional embedding of shape {tuple(pos.shape)}; {arch.name} needs "
            f"(1, 1 + g*g, {arch.width})"
        )
    return grid


def _depth(tensors: Mapping[str, torch.Tensor]) -> int:
    indices = {int(m.group(1)) for k in tensors if (m := re.match(r"blocks\.(\d+)\.", k))}
    return max(indices) + 1 if indices else 0


def _what_else(keys: list[str], arch: VitArch) -> str:
    if any(k.startswith(("visual.", "text_projection")) for k in keys):
        return f"a CLIP checkpoint (open_clip layout), not a {arch.name} backbone"
    shown = ", ".join(keys[:3]) or "no tensors"
    return f"no cls_token tensor: not a DINO/DINOv2 backbone checkpoint (first keys: {shown})"


def _first(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__
