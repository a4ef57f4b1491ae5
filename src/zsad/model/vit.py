"""DINO and DINOv2 ViTs, and the encoder that taps them as MuSc does.

Parameter names follow the official (torch hub) checkpoints, so their state dicts load as they
are; :mod:`zsad.model.checkpoints` maps the HuggingFace and timm layouts onto them.

What MuSc feeds its scorer from these backbones (``models/musc.py``): the outputs of the tapped
blocks passed through the final LayerNorm (``get_intermediate_layers`` with its default
``norm=True``), and the final-normed CLS token of the last block as the image feature.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zsad.errors import ZsadError
from zsad.formats.backbones import IMAGENET_MEAN, IMAGENET_STD, VitArch
from zsad.model.encoder import (
    EncoderOutputs,
    check_image_size,
    check_input_size,
    default_taps,
    resize_positional_embedding,
)

_EPS = 1e-6  # both families' LayerNorm epsilon
TAP_OUTPUTS = ("cls", "taps")


class LayerScale(nn.Module):
    """A learned per-channel scale on a residual branch (DINOv2)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale ``x`` channel-wise."""
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the tokens of (B, T, C)."""
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class Mlp(nn.Module):
    """Linear, exact GELU, linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The feed-forward branch."""
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """SwiGLU with both input branches in one matrix (DINOv2 ViT-g's ``w12``, ``w3``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The gated feed-forward branch."""
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class Block(nn.Module):
    """Pre-norm transformer block, with layer scale on both branches for DINOv2."""

    def __init__(self, arch: VitArch) -> None:
        super().__init__()
        dim = arch.width
        self.norm1 = nn.LayerNorm(dim, eps=_EPS)
        self.attn = Attention(dim, arch.heads)
        self.ls1: nn.Module = LayerScale(dim) if arch.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=_EPS)
        ffn = SwiGLU if arch.ffn == "swiglu" else Mlp
        self.mlp = ffn(dim, arch.mlp_hidden)
        self.ls2: nn.Module = LayerScale(dim) if arch.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One block of the residual stream."""
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens with one strided convolution."""

    def __init__(self, arch: VitArch) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, arch.width, arch.patch_size, stride=arch.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, P, C)."""
        return self.proj(pixels).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """A DINO/DINOv2 ViT with the official checkpoints' parameter names (no head)."""

    def __init__(self, arch: VitArch, pos_grid: int | None = None) -> None:
        super().__init__()
        self.arch = arch
        grid = arch.pos_grid if pos_grid is None else pos_grid
        self.patch_embed = PatchEmbed(arch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, arch.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, arch.width))
        self.blocks = nn.ModuleList(Block(arch) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(arch.width, eps=_EPS)


class TapEncoder(nn.Module):
    """A DINO/DINOv2 ViT at a fixed input size returning MuSc's features: normed taps and CLS.

    Outputs follow :class:`~zsad.model.encoder.EncoderOutputs`: ``taps`` (B, n_taps, 1+P, C)
    are the tapped blocks' outputs after the final LayerNorm, ``cls`` the L2-normalised
    final-normed CLS token of the last block. There is no ``local`` output (no CLIP text tower).
    """

    def __init__(
        self,
        vit: VisionTransformer,
        *,
        image_size: int | None = None,
        taps: Sequence[int] | None = None,
        outputs: Iterable[str] = TAP_OUTPUTS,
    ) -> None:
        super().__init__()
        arch = vit.arch
        wanted = set(outputs)
        if "local" in wanted:
            raise ZsadError(arch.headclip_refusal)
        self.outputs = tuple(o for o in TAP_OUTPUTS if o in wanted)
        unknown = wanted - set(TAP_OUTPUTS)
        if unknown or not self.outputs:
            raise ZsadError(
                f"outputs {sorted(unknown) or '[]'}: choose from {', '.join(TAP_OUTPUTS)}"
            )
        self.arch = arch
        self.patch_size = arch.patch_size
        self.image_size = arch.default_image_size if image_size is None else image_size
        self.grid = check_image_size(self.image_size, self.patch_size)
        self.taps = tuple(taps) if taps is not None else default_taps(arch.depth)
        if not self.taps or any(not 0 <= i < arch.depth for i in self.taps):
            raise ZsadError(
                f"taps {list(self.taps)}: need 0-based block indices in 0..{arch.depth - 1}"
            )
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.blocks = vit.blocks
        self.norm = vit.norm
        pos = resize_positional_embedding(vit.pos_embed.detach()[0], self.grid)
        self.register_buffer("positional_embedding", pos, persistent=True)
        self.n_run = arch.depth if "cls" in self.outputs else max(self.taps) + 1

    @property
    def num_patches(self) -> int:
        """Patch tokens per image (grid squared)."""
        return self.grid * self.grid

    def forward(self, pixels: torch.Tensor) -> EncoderOutputs:
        """Encode normalised pixels (B, 3, S, S) with S the build-time image size."""
        x = self._embed(pixels)
        tapped = []
        for i in range(self.n_run):
            x = self.blocks[i](x)
            if i in self.taps and "taps" in self.outputs:
                tapped.append(self.norm(x))
        cls = None
        if "cls" in self.outputs:
            cls = F.normalize(self.norm(x[:, 0]), dim=-1)
        return EncoderOutputs(
            cls=cls, taps=torch.stack(tapped, dim=1) if tapped else None, local=None
        )

    def block_outputs(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, depth, 1+P, C): the raw residual stream after every block, before any norm."""
        x = self._embed(pixels)
        streams = []
        for block in self.blocks:
            x = block(x)
            streams.append(x)
        return torch.stack(streams, dim=1)

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        check_input_size(pixels, self.image_size)
        x = self.patch_embed(pixels)
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
