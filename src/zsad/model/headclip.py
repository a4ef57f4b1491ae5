"""The trainable HeadCLIP model: frozen CLIP, learned prompts, learned CSA head weights (LHW).

Training only ever updates three tensors: the prompt context vectors, the deep text tokens and
the encoder's head weights. The scoring is also written in NumPy (:mod:`zsad.scoring.headclip`),
which is what inference uses; the torch functions here are its twins, held to it by the tests:
``probability_maps`` feeds the training loss, and ``anomaly_maps`` / ``global_scores`` /
``joint_scores`` score in torch (evaluation on the training device, or inside an exported graph:
the blur is a plain convolution).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zsad.errors import ZsadError
from zsad.formats.artifact import HeadclipArtifact
from zsad.formats.local_path import LocalPath
from zsad.formats.methods import METHODS
from zsad.model.encoder import DualPathEncoder
from zsad.model.prompts import DEEP_LAYERS, N_CTX, N_DEEP, PromptLearner
from zsad.scoring.headclip import (
    BLUR_TRUNCATE,
    JAS_RATIO,
    SIGMA,
    TEMPERATURE,
    TOP_K_PERCENT,
    top_k_count,
)

HEADCLIP_OUTPUTS = METHODS["headclip"].outputs
# The learned tensors, by their names in HeadCLIP; the artifact stores them under these names.
LEARNED = ("prompts.ctx", "prompts.deep_tokens", "encoder.head_weights")


class HeadclipOutputs(NamedTuple):
    """One forward pass: the logits of both paths against the current (normal, abnormal) text."""

    image_logits: torch.Tensor  # (B, 2) CLS similarity / temperature
    patch_logits: torch.Tensor  # (B, L, P, 2) local-token similarity / temperature, per read-out


class HeadCLIP(nn.Module):
    """Frozen CLIP with a dual-path image encoder and a prompt learner on the text tower."""

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        *,
        image_size: int = 518,
        local_path: LocalPath | None = None,
        n_ctx: int = N_CTX,
        n_deep: int = N_DEEP,
        deep_layers: int = DEEP_LAYERS,
        train_head_weights: bool = True,
        temperature: float = TEMPERATURE,
        seed: int = 0,
    ) -> None:
        super().__init__()
        clip_model.requires_grad_(False)
        self.encoder = DualPathEncoder(
            clip_model, image_size=image_size, local_path=local_path, outputs=HEADCLIP_OUTPUTS
        )
        self.encoder.head_weights.requires_grad_(train_head_weights)
        self.prompts = PromptLearner(
            clip_model,
            tokenizer,
            n_ctx=n_ctx,
            n_deep=n_deep,
            deep_layers=deep_layers,
            generator=torch.Generator().manual_seed(seed),
        )
        self.temperature = temperature

    def forward(self, pixels: torch.Tensor) -> HeadclipOutputs:
        """Encode normalised pixels (B, 3, S, S) and compare both paths with the prompts."""
        text = self.prompts()
        out = self.encoder(pixels)
        return HeadclipOutputs(
            image_logits=out.cls @ text.T / self.temperature,
            patch_logits=out.local @ text.T / self.temperature,
        )

    def learned_state(self) -> dict[str, torch.Tensor]:
        """The learned tensors (detached), keyed by LEARNED names."""
        params = dict(self.named_parameters())
        return {name: params[name].detach() for name in LEARNED}

    def load_learned_state(self, state: dict[str, torch.Tensor | np.ndarray]) -> None:
        """Copy learned tensors in; a missing name or a shape mismatch is a ZsadError."""
        params = dict(self.named_parameters())
        for name in LEARNED:
            if name not in state:
                raise ZsadError(f"learned state: {name} is missing")
            value = torch.as_tensor(state[name])
            if tuple(value.shape) != tuple(params[name].shape):
                raise ZsadError(
                    f"learned state: {name} has shape {tuple(value.shape)}, this model needs "
                    f"{tuple(params[name].shape)}"
                )
            with torch.no_grad():
                params[name].copy_(value)

    @torch.no_grad()
    def to_artifact(self, backbone: str, hyperparameters: dict) -> HeadclipArtifact:
        """Freeze the current state into an artifact: final text embeddings + head weights."""
        state = {name: t.float().cpu().numpy() for name, t in self.learned_state().items()}
        return HeadclipArtifact(
            text_embeddings=self.prompts().float().cpu().numpy(),
            head_weights=state["encoder.head_weights"],
            backbone=backbone,
            image_size=self.encoder.image_size,
            local_path=self.encoder.local_path,
            hyperparameters={**hyperparameters, "temperature": self.temperature},
            extra={name: value for name, value in state.items() if name.startswith("prompts.")},
        )


def encoder_from_artifact(clip_model: nn.Module, artifact: HeadclipArtifact) -> DualPathEncoder:
    """A DualPathEncoder (outputs cls, local) at the artifact's size, local path and weights."""
    encoder = DualPathEncoder(
        clip_model,
        image_size=artifact.image_size,
        local_path=artifact.local_path,
        outputs=HEADCLIP_OUTPUTS,
    )
    encoder.load_head_weights(artifact.head_weights, "calibration artifact")
    return encoder.requires_grad_(False).eval()


def probability_maps(patch_logits: torch.Tensor, image_size: int) -> torch.Tensor:
    """(B, L, P, 2) logits -> (B, L, 2, S, S) softmax probabilities per read-out, bilinear
    (align_corners=False)."""
    probs = patch_logits.softmax(dim=-1)
    batch, layers = probs.shape[:2]
    maps = F.interpolate(
        _grid(probs.transpose(2, 3).flatten(0, 1)),
        size=(image_size, image_size),
        mode="bilinear",
        align_corners=False,
    )
    return maps.unflatten(0, (batch, layers))


def anomaly_maps(patch_logits: torch.Tensor, image_size: int, sigma: float = SIGMA) -> torch.Tensor:
    """(B, L, P, 2) logits -> (B, S, S) maps: (1 - P_normal + P_abnormal) / 2 averaged over the
    read-outs, upsampled, blurred."""
    probs = patch_logits.softmax(dim=-1)
    # Upsampling and blur are linear: averaging the read-outs first gives the same map.
    combined = ((1.0 - probs[..., 0] + probs[..., 1]) / 2.0).mean(dim=1)
    maps = F.interpolate(
        _grid(combined.unsqueeze(1)),
        size=(image_size, image_size),
        mode="bilinear",
        align_corners=False,
    )[:, 0]
    return gaussian_blur(maps, sigma) if sigma > 0 else maps


def gaussian_blur(
    maps: torch.Tensor, sigma: float, truncate: float = BLUR_TRUNCATE
) -> torch.Tensor:
    """Blur (B, H, W) maps exactly as scipy.ndimage.gaussian_filter (mode 'reflect')."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.dtype).to(maps.device)
    out = maps.unsqueeze(1)
    for dim in (2, 3):
        index = _reflect_index(out.shape[dim], radius, maps.device)
        padded = out.index_select(dim, index)
        weight = kernel.view(1, 1, -1, 1) if dim == 2 else kernel.view(1, 1, 1, -1)
        out = F.conv2d(padded, weight)
    return out[:, 0]


def global_scores(image_logits: torch.Tensor) -> torch.Tensor:
    """(B, 2) logits -> (B,) softmax probability of the abnormal prompt."""
    return image_logits.softmax(dim=-1)[:, 1]


def joint_scores(
    global_score: torch.Tensor,
    maps: torch.Tensor,
    r: float = JAS_RATIO,
    top_k: float = TOP_K_PERCENT,
) -> torch.Tensor:
    """JAS: r * S_global + (1 - r) * mean of the top ``top_k`` % pixels of each map."""
    flat = maps.reshape(maps.shape[0], -1)
    local = flat.topk(top_k_count(flat.shape[1], top_k), dim=1).values.mean(dim=1)
    return r * global_score + (1.0 - r) * local


def _grid(values: torch.Tensor) -> torch.Tensor:
    """(B, C, P) -> (B, C, g, g)."""
    side = round(values.shape[-1] ** 0.5)
    return values.reshape(*values.shape[:-1], side, side)


def _reflect_index(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-n axis padded by radius with scipy's 'reflect' (edge repeated)."""
    positions = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(positions >= n, 2 * n - 1 - positions, positions)
