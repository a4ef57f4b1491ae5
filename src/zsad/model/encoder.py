"""The dual-path CLIP image encoder: residual-stream taps, the CLS embedding, and CSA+LHW tokens.

The local tokens follow a :class:`~zsad.formats.local_path.LocalPath`: by default AnomalyCLIP's
second residual stream (a copy of the stream entering the first CSA block plus every CSA
block's output), or the plain sum of the CSA outputs; either is read after each read-out block.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zsad.errors import ZsadError
from zsad.formats.backbones import MAX_GRID
from zsad.formats.local_path import LocalPath
from zsad.runtime.preprocess import OPENAI_MEAN, OPENAI_STD

OUTPUTS = ("cls", "taps", "local")


class EncoderOutputs(NamedTuple):
    """What one forward pass returns; an output that was not asked for is None."""

    cls: torch.Tensor | None  # (B, D_embed), L2-normalised CLIP image embedding
    taps: torch.Tensor | None  # (B, n_taps, 1+P, C), raw residual stream after the tapped blocks
    # (B, L, P, D_embed): L2-normalised local tokens in the joint space, one row per read-out block
    local: torch.Tensor | None


def default_taps(n_layers: int) -> tuple[int, ...]:
    """0-based blocks at the quarter points: (5, 11, 17, 23) for a 24-block ViT-L (fewer, without
    repeats, for a ViT under 4 blocks)."""
    return tuple(sorted({max(n_layers * k // 4 - 1, 0) for k in range(1, 5)}))


def check_input_size(pixels: torch.Tensor, image_size: int) -> None:
    """Fail in one line unless ``pixels`` are (..., S, S) at the build-time size S."""
    if pixels.shape[-2:] != (image_size, image_size):
        raise ZsadError(
            f"input of size {tuple(pixels.shape[-2:])}: this encoder was built for "
            f"{image_size}x{image_size}"
        )


def check_image_size(image_size: int, patch_size: int) -> int:
    """The patch grid side for ``image_size``; one line unless it is a multiple of the patch
    size with at most ``MAX_GRID`` patches a side."""
    if image_size % patch_size:
        raise ZsadError(
            f"--image-size {image_size}: must be a multiple of the patch size {patch_size}"
        )
    limit = MAX_GRID * patch_size
    if image_size > limit:
        raise ZsadError(
            f"--image-size {image_size}: at most {limit} px with {patch_size} px patches (a "
            f"{MAX_GRID} x {MAX_GRID} patch grid, twice the side of the papers' 37 x 37 at "
            "518 px): attention memory and MSM work grow with the square of the patch count, "
            "16x the papers' cost at this limit"
        )
    return image_size // patch_size


def resize_positional_embedding(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize a (1+g*g, C) positional embedding to a new grid: bicubic, align_corners=False."""
    cls_pos, patch_pos = pos[:1], pos[1:]
    old = math.isqrt(patch_pos.shape[0])
    if old * old != patch_pos.shape[0]:
        raise ZsadError(
            f"positional embedding of {patch_pos.shape[0]} patches is not a square grid"
        )
    if old == grid:
        return pos.clone()
    patch_pos = patch_pos.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(pos.dtype)
    return torch.cat([cls_pos, patch_pos], dim=0)


class DualPathEncoder(nn.Module):
    """CLIP ViT image tower with a fixed input size that returns taps, CLS and CSA+LHW tokens."""

    def __init__(
        self,
        clip_model: nn.Module,
        *,
        image_size: int = 518,
        taps: Sequence[int] | None = None,
        local_path: LocalPath | None = None,
        outputs: Iterable[str] = OUTPUTS,
    ) -> None:
        super().__init__()
        visual = clip_model.visual
        _check_supported(visual)
        self.blocks = visual.transformer.resblocks
        n_layers = len(self.blocks)
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        self.patch_size = visual.conv1.kernel_size[0]
        self.grid = check_image_size(image_size, self.patch_size)
        self.image_size = image_size
        self.outputs = tuple(o for o in OUTPUTS if o in set(outputs))
        unknown = set(outputs) - set(OUTPUTS)
        if unknown or not self.outputs:
            raise ZsadError(f"outputs {sorted(unknown) or '[]'}: choose from {', '.join(OUTPUTS)}")
        self.taps = tuple(taps) if taps is not None else default_taps(n_layers)
        bad = [i for i in self.taps if not 0 <= i < n_layers]
        if bad or not self.taps:
            raise ZsadError(
                f"taps {list(self.taps)}: need 0-based block indices in 0..{n_layers - 1}"
            )
        self.local_path = local_path if local_path is not None else LocalPath.resolve(n_layers)
        self.local_path.check(n_layers)
        self.csa_layers = self.local_path.csa_layers

        # The normalisation the weights were trained with (open_clip's config), OpenAI's else.
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", OPENAI_MEAN))
        self.std = tuple(cfg.get("std", OPENAI_STD))
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.ln_pre = visual.ln_pre
        self.ln_post = visual.ln_post
        self.proj = visual.proj
        self.n_heads = self.blocks[0].attn.num_heads
        pos = resize_positional_embedding(visual.positional_embedding.detach(), self.grid)
        self.register_buffer("positional_embedding", pos, persistent=True)
        # LHW: one scalar per CSA block and head; 1.0 leaves CSA as published.
        self.head_weights = nn.Parameter(torch.ones(len(self.csa_layers), self.n_heads))
        last_needed = n_layers - 1 if "cls" in self.outputs else -1
        if "taps" in self.outputs:
            last_needed = max(last_needed, *self.taps)
        if "local" in self.outputs:
            last_needed = max(last_needed, self.local_path.readout_layers[-1])
        self.n_run = last_needed + 1

    def load_head_weights(self, weights: np.ndarray, source: str) -> None:
        """Set the LHW from an array of shape (CSA layers, heads); `source` names it in errors."""
        weights = np.asarray(weights, np.float32)
        if weights.shape != tuple(self.head_weights.shape):
            raise ZsadError(
                f"{source}: head weights of shape {weights.shape} do not fit this model's "
                f"{tuple(self.head_weights.shape)} (CSA layers x heads)"
            )
        with torch.no_grad():
            self.head_weights.copy_(torch.from_numpy(weights))

    @property
    def num_patches(self) -> int:
        """Patch tokens per image (grid squared)."""
        return self.grid * self.grid

    def forward(self, pixels: torch.Tensor) -> EncoderOutputs:
        """Encode normalised pixels (B, 3, S, S) with S the build-time image size."""
        x, tapped, streams = self._run(pixels)
        local = None
        if "local" in self.outputs:
            local = torch.stack([self._project(s[:, 1:]) for s in streams], dim=1)
        return EncoderOutputs(
            cls=self._project(x[:, 0]) if "cls" in self.outputs else None,
            taps=torch.stack(tapped, dim=1) if "taps" in self.outputs else None,
            local=local,
        )

    def local_streams(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, L, 1+P, C): the local stream at each read-out block, before ln_post and proj."""
        if "local" not in self.outputs:
            raise ZsadError("local_streams: this encoder was built without the local output")
        return torch.stack(self._run(pixels)[2], dim=1)

    def _run(
        self, pixels: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The residual stream after the last block run, the taps and the local read-outs."""
        x = self._embed(pixels)
        want_taps = "taps" in self.outputs
        want_local = "local" in self.outputs
        tapped: list[torch.Tensor] = []
        streams: list[torch.Tensor] = []
        stream: torch.Tensor | None = None
        csa_index = {layer: j for j, layer in enumerate(self.csa_layers)}
        readout = set(self.local_path.readout_layers)
        for i in range(self.n_run):
            block = self.blocks[i]
            if want_local and i in csa_index:
                contribution = self._csa(block, x, self.head_weights[csa_index[i]])
                if stream is None and self.local_path.kind == "residual":
                    stream = x + contribution
                else:
                    # Out-of-place on purpose: an in-place add aliased every layer in one public
                    # code, and the read-outs kept so far must not change.
                    stream = contribution if stream is None else stream + contribution
            x = self._run_block(block, x)
            if want_taps and i in self.taps:
                tapped.append(x)
            if want_local and i in readout:
                assert stream is not None  # LocalPath.check: no read-out before the first CSA
                streams.append(stream)
        return x, tapped, streams

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        check_input_size(pixels, self.image_size)
        x = self.conv1(pixels)
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.batch_first:
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)

    def _csa(self, block: nn.Module, x: torch.Tensor, head_weights: torch.Tensor) -> torch.Tensor:
        """CSA: softmax(V Vᵀ/sqrt(d)) V with the block's own weights, each head scaled."""
        attn = block.attn
        width = x.shape[-1]
        w_v = attn.in_proj_weight[2 * width :]
        b_v = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
        batch, tokens, _ = x.shape
        v = F.linear(block.ln_1(x), w_v, b_v)
        v = v.reshape(batch, tokens, self.n_heads, width // self.n_heads).transpose(1, 2)
        heads = F.scaled_dot_product_attention(v, v, v)
        heads = heads * head_weights.to(heads.dtype).view(1, -1, 1, 1)
        merged = heads.transpose(1, 2).reshape(batch, tokens, width)
        return block.ls_1(attn.out_proj(merged))

    def _project(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.ln_post(tokens)
        if self.proj is not None:
            out = out @ self.proj
        return F.normalize(out, dim=-1)


def _check_supported(visual: nn.Module) -> None:
    needed = ("conv1", "class_embedding", "positional_embedding", "transformer", "ln_post")
    if not all(hasattr(visual, name) for name in needed):
        raise ZsadError(f"{type(visual).__name__}: only open_clip ViT image towers are supported")
    if (
        getattr(visual, "attn_pool", None) is not None
        or getattr(visual, "pool_type", "tok") != "tok"
    ):
        raise ZsadError("this ViT pools without a class token; zsad needs CLS-token CLIP models")
    if getattr(visual, "final_ln_after_pool", False):
        raise ZsadError("this ViT applies ln_post after pooling; not supported")
    block = visual.transformer.resblocks[0]
    if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
        raise ZsadError(
            f"{type(block).__name__}: only standard open_clip attention blocks are supported"
        )
