"""Learnable object-agnostic prompts with deep text prompting on a frozen open_clip text tower.

Two prompts, "[V1..Vn] object." and "[W1..Wn] damaged object.", whose n context vectors are
learned (AnomalyCLIP, which HeadCLIP follows; init N(0, 0.02)). On top of that, ``n_deep``
learnable tokens replace token positions 1..n_deep at the input of text blocks 1..deep_layers
(0-based; the "first 9 layers" of the papers count the embedding layer as the first). Block 0
sees the context vectors themselves. The deep tokens are shared by both prompts and get no
positional embedding, as in AnomalyCLIP's text encoder.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from zsad.errors import ZsadError

N_CTX = 12
N_DEEP = 4
DEEP_LAYERS = 8
INIT_STD = 0.02
TEMPLATES = ("object.", "damaged object.")  # rows: normal, abnormal
PLACEHOLDER = "X"


class PromptLearner(nn.Module):
    """Produces the two L2-normalised text embeddings (normal, abnormal) from learned prompts."""

    def __init__(
        self,
        clip_model: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        *,
        n_ctx: int = N_CTX,
        n_deep: int = N_DEEP,
        deep_layers: int = DEEP_LAYERS,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        tower = _text_tower(clip_model)
        self.blocks = tower.transformer.resblocks
        self.batch_first = getattr(tower.transformer, "batch_first", True)
        self.ln_final = tower.ln_final
        self.text_projection = tower.text_projection
        self.positional_embedding = tower.positional_embedding
        self.register_buffer("attn_mask", getattr(tower, "attn_mask", None), persistent=False)
        width = tower.token_embedding.weight.shape[1]
        if not 0 <= n_deep <= n_ctx:
            raise ZsadError(f"deep tokens {n_deep}: need 0..{n_ctx}, the number of context vectors")
        # Blocks 1..deep_layers exist only up to the tower's depth (4 blocks in zsad-tiny).
        self.deep_layers = min(deep_layers, len(self.blocks) - 1) if n_deep else 0
        self.n_ctx = n_ctx
        self.n_deep = n_deep

        prompts = [" ".join([PLACEHOLDER] * n_ctx + [t]) for t in TEMPLATES]
        tokens = tokenizer(prompts).long()
        eot = tokens.argmax(dim=-1)
        if int(eot.max()) >= tokens.shape[1] - 1:
            raise ZsadError(f"{n_ctx} context vectors do not fit the text context length")
        with torch.no_grad():
            embedded = tower.token_embedding(tokens)
        self.register_buffer("prefix", embedded[:, :1].clone())
        self.register_buffer("suffix", embedded[:, 1 + n_ctx :].clone())
        self.register_buffer("eot_index", eot)

        def init(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=generator) * INIT_STD)

        self.ctx = init(len(TEMPLATES), n_ctx, width)
        self.deep_tokens = init(self.deep_layers, n_deep, width)

    def forward(self) -> torch.Tensor:
        """(2, D) text embeddings, rows (normal, abnormal), L2-normalised."""
        x = torch.cat([self.prefix, self.ctx, self.suffix], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        mask = None if self.attn_mask is None else self.attn_mask.to(x.dtype)
        for i, block in enumerate(self.blocks):
            if 1 <= i <= self.deep_layers:
                deep = self.deep_tokens[i - 1].expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :1], deep, x[:, 1 + self.n_deep :]], dim=1)
            if self.batch_first:
                x = block(x, attn_mask=mask)
            else:
                x = block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), self.eot_index]
        if isinstance(self.text_projection, nn.Linear):
            x = self.text_projection(x)
        elif self.text_projection is not None:
            x = x @ self.text_projection
        return F.normalize(x, dim=-1)


def _text_tower(clip_model: nn.Module) -> nn.Module:
    """The module holding the text tower's parts: CLIP itself, or CustomTextCLIP's ``text``."""
    tower = getattr(clip_model, "text", clip_model)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if not all(hasattr(tower, name) for name in needed):
        raise ZsadError(f"{type(clip_model).__name__}: no open_clip transformer text tower")
    pool = getattr(tower, "pool_type", getattr(tower, "text_pool_type", "argmax"))
    if pool != "argmax" or getattr(tower, "cls_emb", None) is not None:
        raise ZsadError(
            f"{type(clip_model).__name__}: text pooling {pool!r} is not supported (need the "
            "end-of-text token, as in OpenAI CLIP)"
        )
    return tower
