"""The HeadCLIP torch model: prompt learner on open_clip's text tower, learned tensors, artifact."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch

from zsad.errors import ZsadError
from zsad.formats.local_path import LocalPath
from zsad.model import load_clip
from zsad.model.headclip import LEARNED, HeadCLIP, encoder_from_artifact, probability_maps
from zsad.model.prompts import PromptLearner

SIZE = 56


@pytest.fixture(scope="module")
def tokenizer() -> open_clip.tokenizer.SimpleTokenizer:
    return open_clip.get_tokenizer("zsad-tiny")


def _clip() -> open_clip.CLIP:
    return load_clip("zsad-tiny", seed=0)


def test_prompt_learner_without_deep_tokens_is_clip_text_encoding(tokenizer) -> None:
    clip = _clip()
    learner = PromptLearner(clip, tokenizer, n_deep=0)
    assert learner.deep_layers == 0
    tokens = tokenizer(
        ["X X X X X X X X X X X X object.", "X X X X X X X X X X X X damaged object."]
    )
    with torch.no_grad():
        # Context vectors equal to the placeholders' own embeddings reproduce plain CLIP.
        learner.ctx.copy_(clip.token_embedding(tokens)[:, 1:13])
        ours = learner()
        reference = clip.encode_text(tokens, normalize=True)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)


def test_deep_tokens_replace_positions_one_to_four_in_blocks_one_and_up(tokenizer) -> None:
    clip = _clip()
    learner = PromptLearner(clip, tokenizer, deep_layers=8)
    # zsad-tiny's text tower has 4 blocks, so only blocks 1..3 take deep tokens.
    assert learner.deep_layers == 3 and learner.deep_tokens.shape == (3, 4, 64)
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        block.register_forward_pre_hook(lambda _m, args, i=i: seen.__setitem__(i, args[0]))
        for i, block in enumerate(learner.blocks)
    ]
    with torch.no_grad():
        learner()
    for hook in hooks:
        hook.remove()
    first = seen[0]
    assert torch.allclose(first[:, 1:13], learner.ctx + learner.positional_embedding[1:13])
    for i in (1, 2, 3):
        for row in range(2):
            torch.testing.assert_close(seen[i][row, 1:5], learner.deep_tokens[i - 1])
        assert not torch.allclose(seen[i][:, 5:], first[:, 5:])  # the rest flows through


def test_only_prompts_deep_tokens_and_head_weights_train(tokenizer) -> None:
    clip = _clip()
    model = HeadCLIP(clip, tokenizer, image_size=SIZE)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(LEARNED)
    counts = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    assert counts == {
        "prompts.ctx": 2 * 12 * 64,
        "prompts.deep_tokens": 3 * 4 * 64,
        "encoder.head_weights": 6 * 4,  # CSA blocks 2..7 of 8 (the residual default), 4 heads
    }
    frozen = HeadCLIP(_clip(), tokenizer, image_size=SIZE, train_head_weights=False)
    assert not frozen.encoder.head_weights.requires_grad


def test_a_training_step_changes_only_the_learned_tensors(tokenizer) -> None:
    clip = _clip()
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    model = HeadCLIP(clip, tokenizer, image_size=SIZE)
    learned_before = {k: v.clone() for k, v in model.learned_state().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    pixels = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    out = model(pixels)
    probs = probability_maps(out.patch_logits, SIZE)
    assert probs.shape == (2, 1, 2, SIZE, SIZE)  # one read-out block
    loss = probs[:, :, 1].mean() + out.image_logits.softmax(-1)[:, 1].mean()
    loss.backward()
    optimizer.step()
    for name, value in clip.state_dict().items():
        assert torch.equal(value, before[name]), name
    for name, value in model.learned_state().items():
        assert not torch.equal(value, learned_before[name]), name


def test_artifact_holds_what_inference_needs(tokenizer) -> None:
    clip = _clip()
    model = HeadCLIP(clip, tokenizer, image_size=SIZE, seed=3)
    with torch.no_grad():
        model.encoder.head_weights.mul_(torch.linspace(0.5, 1.5, 24).view(6, 4))
    artifact = model.to_artifact("zsad-tiny", {"note": 1})
    assert artifact.text_embeddings.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(artifact.text_embeddings, axis=1), 1, atol=1e-6)
    assert artifact.local_path == LocalPath("residual", (2, 3, 4, 5, 6, 7), (7,))
    assert artifact.image_size == SIZE
    assert set(artifact.extra) == {"prompts.ctx", "prompts.deep_tokens"}
    assert artifact.hyperparameters == {"note": 1, "temperature": 0.07}

    # The stored prompt tensors rebuild the same text embeddings in a fresh model.
    fresh = HeadCLIP(_clip(), tokenizer, image_size=SIZE, seed=99)
    fresh.load_learned_state({**artifact.extra, "encoder.head_weights": artifact.head_weights})
    with torch.no_grad():
        np.testing.assert_allclose(fresh.prompts().numpy(), artifact.text_embeddings, atol=1e-6)

    encoder = encoder_from_artifact(_clip(), artifact)
    assert encoder.outputs == ("cls", "local")
    np.testing.assert_array_equal(encoder.head_weights.detach().numpy(), artifact.head_weights)
    pixels = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(encoder(pixels).local, model.encoder(pixels).local)


def test_the_encoder_follows_the_artifacts_local_path(tokenizer) -> None:
    path = LocalPath("sum", (2, 3, 4), (3, 4))
    model = HeadCLIP(_clip(), tokenizer, image_size=SIZE, local_path=path)
    artifact = model.to_artifact("zsad-tiny", {})
    assert artifact.local_path == path and artifact.head_weights.shape == (3, 4)
    encoder = encoder_from_artifact(_clip(), artifact)
    assert encoder.local_path == path
    pixels = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert encoder(pixels).local.shape == (1, 2, 16, 64)
        torch.testing.assert_close(encoder(pixels).local, model.encoder(pixels).local)


def test_mismatched_learned_state_is_a_clear_error(tokenizer) -> None:
    model = HeadCLIP(_clip(), tokenizer, image_size=SIZE)
    state = {k: v.clone() for k, v in model.learned_state().items()}
    state["encoder.head_weights"] = torch.ones(3, 4)
    with pytest.raises(ZsadError, match=r"encoder.head_weights has shape \(3, 4\)"):
        model.load_learned_state(state)
    del state["prompts.ctx"]
    with pytest.raises(ZsadError, match="prompts.ctx is missing"):
        model.load_learned_state(state)
