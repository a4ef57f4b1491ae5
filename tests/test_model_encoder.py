"""The dual-path encoder against open_clip's own forward, on the seeded tiny model."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from zsad.errors import ZsadError
from zsad.formats.local_path import LocalPath, default_csa_layers
from zsad.model import DualPathEncoder, default_taps, load_clip

NATIVE = 224


@pytest.fixture(scope="module")
def clip_model() -> open_clip.CLIP:
    return load_clip("zsad-tiny", seed=0)


def _pixels(size: int, n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_default_layer_choices_match_the_papers_for_vit_l() -> None:
    assert default_taps(24) == (5, 11, 17, 23)
    # AnomalyCLIP's DPAM_layer=20: V-V in the last 19 blocks; HeadCLIP's text: blocks 5..19.
    assert default_csa_layers(24) == tuple(range(5, 24))
    assert default_csa_layers(24, "sum") == tuple(range(5, 20))
    assert default_taps(8) == (1, 3, 5, 7)
    assert LocalPath.resolve(24) == LocalPath("residual", tuple(range(5, 24)), (23,))
    assert LocalPath.resolve(24, "sum") == LocalPath("sum", tuple(range(5, 20)), (19,))


def test_shapes(clip_model: open_clip.CLIP) -> None:
    path = LocalPath("residual", (1, 2, 3), (2, 3))
    enc = DualPathEncoder(clip_model, image_size=98, taps=(0, 2), local_path=path)
    with torch.inference_mode():
        out = enc(_pixels(98, n=3))
    grid = 98 // 14
    assert out.cls.shape == (3, 64)
    assert out.taps.shape == (3, 2, 1 + grid * grid, 64)
    assert out.local.shape == (3, 2, grid * grid, 64)
    assert torch.allclose(out.cls.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(out.local.norm(dim=-1), torch.ones(3, 2, grid * grid), atol=1e-5)


def test_cls_and_taps_equal_open_clip_at_native_size(clip_model: open_clip.CLIP) -> None:
    enc = DualPathEncoder(clip_model, image_size=NATIVE)
    x = _pixels(NATIVE)
    with torch.inference_mode():
        out = enc(x)
        reference = clip_model.encode_image(x, normalize=True)
        inter = clip_model.visual.forward_intermediates(
            x, indices=list(enc.taps), output_fmt="NLC", output_extra_tokens=True
        )
    torch.testing.assert_close(out.cls, reference, atol=1e-5, rtol=1e-4)
    expected = torch.stack(
        [
            torch.cat([prefix, tokens], dim=1)
            for prefix, tokens in zip(
                inter["image_intermediates_prefix"], inter["image_intermediates"], strict=True
            )
        ],
        dim=1,
    )
    torch.testing.assert_close(out.taps, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_outputs_at_518_agree_with_open_clip_built_at_518(clip_model: open_clip.CLIP) -> None:
    enc = DualPathEncoder(clip_model, image_size=518)
    big = open_clip.create_model("zsad-tiny", pretrained=None, force_image_size=518).eval()
    state = {k: v.clone() for k, v in clip_model.state_dict().items()}
    # open_clip's loader defaults to antialias=True, a different (PIL-style) cubic kernel; the
    # spec is plain bicubic with align_corners=False.
    open_clip.model.resize_pos_embed(state, big, antialias=False)
    big.load_state_dict(state)
    x = _pixels(518, n=1)
    with torch.inference_mode():
        out = enc(x)
        reference = big.encode_image(x, normalize=True)
        inter = big.visual.forward_intermediates(x, indices=[enc.taps[-1]], output_fmt="NLC")
    torch.testing.assert_close(out.cls, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        out.taps[:, -1, 1:], inter["image_intermediates"][0], atol=1e-5, rtol=1e-4
    )


def _reference_local(
    clip_model: open_clip.CLIP, enc: DualPathEncoder, x: torch.Tensor
) -> torch.Tensor:
    """The local path written out head by head: CSA from the paper's equations (3)-(5); the
    stream starts at zero (eq. 6, "sum") or, as in AnomalyCLIP's code, at the residual stream
    entering the first CSA block ("residual"), and is read after each read-out block."""
    visual = clip_model.visual
    path = enc.local_path
    h = enc._embed(x)
    stream = None
    read = []
    for i, block in enumerate(visual.transformer.resblocks):
        if i in path.csa_layers:
            j = path.csa_layers.index(i)
            width = h.shape[-1]
            v = F.linear(
                block.ln_1(h),
                block.attn.in_proj_weight[2 * width :],
                block.attn.in_proj_bias[2 * width :],
            )
            d = width // enc.n_heads
            heads = []
            for k in range(enc.n_heads):
                vk = v[..., k * d : (k + 1) * d]
                attn = torch.softmax(vk @ vk.transpose(-1, -2) / d**0.5, dim=-1)
                heads.append(enc.head_weights[j, k] * (attn @ vk))
            if stream is None:
                stream = h.clone() if path.kind == "residual" else torch.zeros_like(h)
            stream = stream + block.attn.out_proj(torch.cat(heads, dim=-1))
        h = block(h)
        if i in path.readout_layers:
            read.append(F.normalize(visual.ln_post(stream[:, 1:]) @ visual.proj, dim=-1))
    return torch.stack(read, dim=1)


@pytest.mark.parametrize("kind", ["residual", "sum"])
@pytest.mark.parametrize("readout", [(5,), (2, 5, 7)])
def test_local_path_matches_the_written_out_equations(
    clip_model: open_clip.CLIP, kind: str, readout: tuple[int, ...]
) -> None:
    path = LocalPath(kind, (2, 3, 5), readout)
    enc = DualPathEncoder(clip_model, image_size=56, local_path=path)
    with torch.no_grad():
        enc.head_weights.copy_(
            torch.rand(enc.head_weights.shape, generator=torch.Generator().manual_seed(3))
        )
        x = _pixels(56)
        torch.testing.assert_close(
            enc(x).local, _reference_local(clip_model, enc, x), atol=1e-5, rtol=1e-4
        )


def test_the_two_local_paths_differ_exactly_by_the_starting_residual(
    clip_model: open_clip.CLIP,
) -> None:
    csa, readout = tuple(range(2, 8)), (3, 5, 7)
    residual = DualPathEncoder(
        clip_model, image_size=56, local_path=LocalPath("residual", csa, readout)
    )
    summed = DualPathEncoder(clip_model, image_size=56, local_path=LocalPath("sum", csa, readout))
    # The residual stream entering block 2 is the raw stream after block 1.
    entering = DualPathEncoder(clip_model, image_size=56, taps=(1,), outputs=("taps",))
    x = _pixels(56)
    with torch.no_grad():
        start = entering(x).taps[:, 0]
        difference = residual.local_streams(x) - summed.local_streams(x)
        for layer in range(len(readout)):
            torch.testing.assert_close(difference[:, layer], start, atol=1e-5, rtol=1e-4)
        cosine = (residual(x).local * summed(x).local).sum(dim=-1)
    assert cosine.mean() < 0.99  # the residual is not a small correction


def test_a_readout_before_the_first_csa_block_is_refused(clip_model: open_clip.CLIP) -> None:
    with pytest.raises(ZsadError, match="starts at CSA block 3"):
        DualPathEncoder(clip_model, image_size=56, local_path=LocalPath("sum", (3, 4), (2, 4)))
    with pytest.raises(ZsadError, match="blocks 0..7"):
        LocalPath.resolve(8, "residual", (3, 9))


def test_zeroing_one_head_changes_local_only(clip_model: open_clip.CLIP) -> None:
    enc = DualPathEncoder(clip_model, image_size=56)
    x = _pixels(56)
    with torch.no_grad():
        before = enc(x)
        enc.head_weights[1, 2] = 0.0
        after = enc(x)
    assert (before.local - after.local).abs().max() > 1e-3
    torch.testing.assert_close(before.cls, after.cls)
    torch.testing.assert_close(before.taps, after.taps)


def test_head_weights_receive_gradients_in_every_csa_layer(clip_model: open_clip.CLIP) -> None:
    enc = DualPathEncoder(clip_model, image_size=56, outputs=("local",))
    enc(_pixels(56)).local.pow(3).sum().backward()
    assert enc.head_weights.grad is not None
    assert (enc.head_weights.grad.abs().sum(dim=1) > 0).all()


def test_only_requested_outputs_are_computed(clip_model: open_clip.CLIP) -> None:
    enc = DualPathEncoder(clip_model, image_size=56, taps=(1, 3), outputs=("taps",))
    assert enc.n_run == 4
    with torch.inference_mode():
        out = enc(_pixels(56))
    assert out.cls is None and out.local is None
    full = DualPathEncoder(clip_model, image_size=56, taps=(1, 3))
    with torch.inference_mode():
        torch.testing.assert_close(out.taps, full(_pixels(56)).taps)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 100}, "multiple of the patch size"),
        ({"taps": (0, 8)}, "0-based block indices"),
        ({"outputs": ("cls", "pixels")}, "choose from"),
    ],
)
def test_bad_build_parameters_are_clear_errors(clip_model, kwargs, message) -> None:
    from zsad.errors import ZsadError

    with pytest.raises(ZsadError, match=message):
        DualPathEncoder(clip_model, **kwargs)


def test_wrong_input_size_is_a_clear_error(clip_model: open_clip.CLIP) -> None:
    from zsad.errors import ZsadError

    enc = DualPathEncoder(clip_model, image_size=56)
    with pytest.raises(ZsadError, match="built for 56x56"):
        enc(_pixels(70))
