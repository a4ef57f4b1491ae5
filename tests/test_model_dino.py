"""DINO/DINOv2 backbones on random weights: the checkpoint layouts people download, the features
MuSc feeds its scorer, and one-line errors for what does not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from helpers import one_line_error, zsad
from zsad.errors import ZsadError
from zsad.formats.backbones import ARCHITECTURES, VitArch
from zsad.model import TapEncoder, build_encoder, load_backbone, load_clip
from zsad.model.checkpoints import read_tensors, vit_from_tensors
from zsad.model.vit import VisionTransformer

# Small stand-ins with the real families' structure (a 4 x 4 released grid, 56 px input).
DINOV2 = VitArch("tiny-dinov2", "dinov2", 32, 3, 2, 14, 4, 56, url="")
SWIGLU = VitArch("tiny-dinov2-g", "dinov2", 32, 2, 2, 14, 4, 56, url="", ffn="swiglu")
DINO = VitArch("tiny-dino", "dino", 32, 2, 2, 8, 4, 32, url="")


def _random_vit(arch: VitArch, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    vit = VisionTransformer(arch)
    with torch.no_grad():
        for p in vit.parameters():
            p.copy_(torch.randn_like(p) * 0.1)  # layer scales and embeddings included
    return vit.eval()


def _outputs(vit: VisionTransformer, size: int = 56) -> torch.Tensor:
    encoder = TapEncoder(vit, image_size=size, taps=tuple(range(vit.arch.depth)))
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = encoder(pixels)
    return torch.cat([out.taps.flatten(1), out.cls], dim=1)


def _huggingface(vit: VisionTransformer, prefix: str = "") -> dict[str, torch.Tensor]:
    """The module's weights under HuggingFace Dinov2Model's names (separate q, k, v)."""
    s = vit.state_dict()
    out = {
        "embeddings.cls_token": s["cls_token"],
        "embeddings.mask_token": torch.zeros(1, vit.arch.width),
        "embeddings.position_embeddings": s["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": s["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": s["patch_embed.proj.bias"],
        "layernorm.weight": s["norm.weight"],
        "layernorm.bias": s["norm.bias"],
    }
    for i in range(vit.arch.depth):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            for part, chunk in zip(
                ("query", "key", "value"), s[b + f"attn.qkv.{kind}"].chunk(3), strict=True
            ):
                out[h + f"attention.attention.{part}.{kind}"] = chunk
            out[h + f"attention.output.dense.{kind}"] = s[b + f"attn.proj.{kind}"]
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[h + f"{n}.{kind}"] = s[b + f"{n}.{kind}"]
        out[h + "layer_scale1.lambda1"] = s[b + "ls1.gamma"]
        out[h + "layer_scale2.lambda1"] = s[b + "ls2.gamma"]
    return {prefix + k: v.clone().contiguous() for k, v in out.items()}


def test_hub_state_dicts_load_as_saved(tmp_path: Path) -> None:
    for arch in (DINOV2, DINO):
        vit = _random_vit(arch)
        # Official DINOv2 files also carry the (unused) mask token.
        state = {**vit.state_dict(), "mask_token": torch.zeros(1, arch.width)}
        torch.save(state, tmp_path / f"{arch.name}.pth")
        loaded = vit_from_tensors(arch, read_tensors(tmp_path / f"{arch.name}.pth"), "t")
        size = arch.default_image_size
        assert torch.equal(_outputs(loaded, size), _outputs(vit, size))


def test_dino_training_checkpoints_are_unwrapped(tmp_path: Path) -> None:
    vit = _random_vit(DINO)
    teacher = {f"module.backbone.{k}": v for k, v in vit.state_dict().items()}
    teacher["module.head.mlp.0.weight"] = torch.zeros(4, 32)
    torch.save({"teacher": teacher, "epoch": 100}, tmp_path / "checkpoint.pth")
    loaded = vit_from_tensors(DINO, read_tensors(tmp_path / "checkpoint.pth"), "t")
    assert torch.equal(_outputs(loaded, 32), _outputs(vit, 32))


def test_huggingface_layout_is_the_same_network(tmp_path: Path) -> None:
    vit = _random_vit(DINOV2)
    save_file(_huggingface(vit, prefix="dinov2."), tmp_path / "model.safetensors")
    loaded = vit_from_tensors(DINOV2, read_tensors(tmp_path / "model.safetensors"), "t")
    assert torch.allclose(_outputs(loaded), _outputs(vit), atol=1e-6)


def test_timm_packed_swiglu_maps_to_w12_w3(tmp_path: Path) -> None:
    vit = _random_vit(SWIGLU)
    timm = {
        k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2."): v
        for k, v in vit.state_dict().items()
    }
    save_file(timm, tmp_path / "timm.safetensors")
    loaded = vit_from_tensors(SWIGLU, read_tensors(tmp_path / "timm.safetensors"), "t")
    assert torch.equal(_outputs(loaded), _outputs(vit))


def test_a_released_grid_of_another_size_is_kept_and_resized_at_build() -> None:
    six = _random_vit(VitArch("grid6", "dinov2", 32, 3, 2, 14, 6, 84, url=""))
    loaded = vit_from_tensors(DINOV2, six.state_dict(), "t")  # DINOV2 was released at 4 x 4
    assert loaded.pos_embed.shape == (1, 1 + 36, 32)
    encoder = TapEncoder(loaded, image_size=28)
    assert encoder.positional_embedding.shape == (1 + 4, 32)
    with pytest.raises(ZsadError, match="built for 28x28"):
        encoder(torch.zeros(1, 3, 56, 56))


def test_taps_are_final_normed_blocks_and_cls_the_normed_last_token() -> None:
    vit = _random_vit(DINOV2)
    encoder = TapEncoder(vit, image_size=56, taps=(0, 2))
    pixels = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        out = encoder(pixels)
        blocks = encoder.block_outputs(pixels)
    assert out.local is None and out.taps.shape == (3, 2, 1 + 16, 32)
    assert torch.allclose(out.taps[:, 0], vit.norm(blocks[:, 0]), atol=1e-6)
    assert torch.allclose(out.taps[:, 1], vit.norm(blocks[:, 2]), atol=1e-6)
    assert torch.allclose(out.cls, F.normalize(vit.norm(blocks[:, -1, 0]), dim=-1), atol=1e-6)
    # Taps alone stop after the last tapped block.
    assert TapEncoder(vit, image_size=56, taps=(0,), outputs=("taps",)).n_run == 1
    assert encoder.mean == (0.485, 0.456, 0.406)


def test_encoder_rejects_what_it_cannot_do() -> None:
    vit = _random_vit(DINOV2)
    with pytest.raises(ZsadError, match="multiple of the patch size 14"):
        TapEncoder(vit, image_size=50)
    assert TapEncoder(vit, image_size=1036, outputs=("taps",)).grid == 74
    with pytest.raises(ZsadError, match="at most 1036 px with 14 px patches"):
        TapEncoder(vit, image_size=1050)
    with pytest.raises(ZsadError, match="0..2"):
        TapEncoder(vit, image_size=56, taps=(3,))
    with pytest.raises(ZsadError, match="without a CLIP text tower"):
        TapEncoder(vit, image_size=56, outputs=("cls", "local"))


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda s: s.pop("encoder.layer.1.attention.attention.key.weight"),
         "no tensor encoder.layer.1.attention.attention.{query,key,value}.weight"),
        (lambda s: s.__setitem__("encoder.layer.0.mlp.fc2.bias", torch.zeros(7)),
         "encoder.layer.0.mlp.fc2.bias has shape (7,), tiny-dinov2 needs (32,)"),
        (lambda s: s.__setitem__("encoder.layer.3.norm1.weight", torch.zeros(32)),
         "a checkpoint with 4 blocks; tiny-dinov2 has 3"),
        (lambda s: s.__setitem__("embeddings.position_embeddings", torch.zeros(1, 15, 32)),
         "positional embedding of shape (1, 15, 32)"),
    ],
)  # fmt: skip
def test_partial_or_misshapen_checkpoints_name_the_first_bad_tensor(damage, needle) -> None:
    state = _huggingface(_random_vit(DINOV2))
    damage(state)
    with pytest.raises(ZsadError) as caught:
        vit_from_tensors(DINOV2, state, "--weights w.safetensors")
    message = str(caught.value)
    assert message.startswith("--weights w.safetensors: ") and needle in message
    assert "\n" not in message


def test_other_checkpoints_are_refused_in_one_line(tmp_path: Path) -> None:
    clip = {k: v.contiguous() for k, v in load_clip("zsad-tiny").state_dict().items()}
    with pytest.raises(ZsadError, match="a CLIP checkpoint"):
        vit_from_tensors(DINOV2, clip, "w")
    registers = {**_random_vit(DINOV2).state_dict(), "register_tokens": torch.zeros(1, 4, 32)}
    with pytest.raises(ZsadError, match="register tokens"):
        vit_from_tensors(DINOV2, registers, "w")
    with pytest.raises(ZsadError, match="no cls_token tensor"):
        vit_from_tensors(DINOV2, {"weight": torch.zeros(2)}, "w")
    torch.save({"config": Path("x")}, tmp_path / "pickled.pth")  # needs a full unpickler
    with pytest.raises(ZsadError, match="weights_only"):
        read_tensors(tmp_path / "pickled.pth")


def test_released_weights_are_fetched_from_the_official_url(monkeypatch) -> None:
    arch = ARCHITECTURES["dinov2_vits14"]
    state = VisionTransformer(arch).state_dict()
    calls = []

    def fetch(url: str, **kwargs):
        calls.append((url, kwargs))
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fetch)
    vit = load_backbone("dinov2_vits14")
    assert isinstance(vit, VisionTransformer) and vit.arch is arch
    assert calls[0][0] == arch.url and calls[0][1]["weights_only"] is True
    assert arch.url.endswith("/dinov2_vits14/dinov2_vits14_pretrain.pth")

    def offline(url: str, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ZsadError, match="could not load dinov2_vits14 weights .* --weights FILE"):
        load_backbone("dinov2_vits14", pretrained="meta")
    with pytest.raises(ZsadError, match="not a known tag for dinov2_vits14"):
        load_backbone("dinov2_vits14", pretrained="openai")


def test_build_encoder_picks_the_family() -> None:
    vit = load_backbone("dino_vitb16", pretrained="random")
    encoder = build_encoder(vit, image_size=64, outputs=("cls", "taps"))
    assert isinstance(encoder, TapEncoder) and encoder.taps == (2, 5, 8, 11)
    with torch.no_grad():
        out = encoder(torch.zeros(1, 3, 64, 64))
    assert out.taps.shape == (1, 4, 1 + 16, 768) and out.cls.shape == (1, 768)


@pytest.mark.slow
def test_cli_lists_and_refuses_dino_models_in_one_line(tmp_path: Path) -> None:
    listed = [json.loads(line) for line in zsad("models", "--json").stdout.splitlines()]
    dino = {m["name"]: m for m in listed if m["name"].startswith("dino")}
    assert set(dino) == set(ARCHITECTURES)
    assert dino["dinov2_vitl14"]["methods"] == ["musc", "staps"]
    assert dino["dinov2_vitl14"]["default_image_size"] == 518
    assert dino["dino_vitb8"]["default_image_size"] == 512

    image = tmp_path / "a.png"
    image.write_bytes(b"")
    one_line_error(
        zsad("infer", str(image), "--method", "headclip", "--model", "dinov2_vits14",
             "--calibration", str(image), "--out", str(tmp_path / "o")),
        "--method headclip: dinov2_vits14 is a DINOv2 image backbone without a CLIP text tower",
    )  # fmt: skip
    one_line_error(
        zsad("export", "--method", "headclip", "--model", "dino_vitb16", "--calibration",
             str(image), "--out", str(tmp_path / "b")),
        "dino_vitb16 is a DINO image backbone",
    )  # fmt: skip
    clip = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in load_clip("zsad-tiny").state_dict().items()}, clip)
    one_line_error(
        zsad("export", "--model", "dinov2_vits14", "--weights", str(clip), "--image-size", "56",
             "--out", str(tmp_path / "c")),
        f"--weights {clip}: a CLIP checkpoint (open_clip layout), not a dinov2_vits14 backbone",
    )  # fmt: skip
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(clip.read_bytes()[:1000])
    one_line_error(
        zsad("export", "--model", "dinov2_vits14", "--weights", str(truncated), "--out",
             str(tmp_path / "d")),
        f"--weights {truncated}: not a readable safetensors file",
    )  # fmt: skip
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


@pytest.mark.slow
def test_from_onnx_refuses_a_graph_that_is_not_a_dinov2_backbone(bundle, tmp_path) -> None:
    graph = bundle / "encoder.onnx"  # zsad-tiny, a CLIP tower
    one_line_error(
        zsad("weights", "from-onnx", str(graph), "--out", str(tmp_path / "w.safetensors")),
        f"{graph}: not a Dinov2 backbone graph",
    )
    one_line_error(
        zsad("weights", "from-onnx", str(graph), "--out", str(tmp_path / "w.pt")),
        "--out", "name a .safetensors file",
    )  # fmt: skip
    one_line_error(
        zsad("weights", "from-onnx", str(tmp_path / "none.onnx"), "--out",
             str(tmp_path / "w.safetensors")),
        "none.onnx: no such file",
    )  # fmt: skip
    assert not list(tmp_path.iterdir())
