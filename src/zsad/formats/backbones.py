"""The self-supervised ViT backbones MuSc also runs (DINO, DINOv2), as data.

Each entry gives what the network's shape and its released checkpoint depend on, nothing more:
data that every layer may read without torch. Names are MuSc's (and torch hub's).
"""

from __future__ import annotations

from dataclasses import dataclass

# Both families were trained on ImageNet-normalised inputs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LABELS = {"dinov2": "DINOv2", "dino": "DINO"}
RELEASE_TAG = "meta"  # --pretrained tag of the official Meta AI release
# The largest patch grid side any encoder is built with: twice the 37 x 37 grid of the papers'
# 518 px ViT-L/14 input, 4x its patches. Self-attention memory and MSM's work grow with the
# square of the patch count (16x at this side); far beyond it a run only fails deep in torch,
# out of memory (99988 px asks for a 13 GB positional embedding even on zsad-tiny).
MAX_GRID = 74
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/{name}/{name}_pretrain.pth"
_DINO_URL = "https://dl.fbaipublicfiles.com/dino/{stem}_pretrain/{stem}_pretrain.pth"


@dataclass(frozen=True)
class VitArch:
    """One DINO-family ViT: its shape, the grid its positional embedding was released at, the
    input size zsad uses by default and where the official weights are published."""

    name: str
    family: str  # "dinov2" (layer scale) or "dino"
    width: int
    depth: int
    heads: int
    patch_size: int
    pos_grid: int
    default_image_size: int
    url: str
    ffn: str = "mlp"  # "mlp" (GELU) or "swiglu" (DINOv2 ViT-g)

    @property
    def layer_scale(self) -> bool:
        """DINOv2 scales each residual branch by a learned per-channel gamma; DINO does not."""
        return self.family == "dinov2"

    @property
    def headclip_refusal(self) -> str:
        """The one-line reason this backbone cannot run HeadCLIP."""
        return (
            f"--method headclip: {self.name} is a {_LABELS[self.family]} image backbone without "
            "a CLIP text tower, which HeadCLIP's prompts need; use a CLIP model (e.g. "
            "ViT-L-14-336) or --method staps / musc"
        )

    @property
    def mlp_hidden(self) -> int:
        """Hidden width of the feed-forward layer (SwiGLU: of each of its two branches)."""
        if self.ffn == "swiglu":
            return (int(self.width * 4 * 2 / 3) + 7) // 8 * 8
        return self.width * 4


def _dinov2(name: str, width: int, depth: int, heads: int, ffn: str = "mlp") -> VitArch:
    # Released at 518 px (37 x 37 patches); MuSc runs them at 518.
    return VitArch(
        name, "dinov2", width, depth, heads, 14, 37, 518, _DINOV2_URL.format(name=name), ffn
    )


def _dino(name: str, stem: str, patch: int) -> VitArch:
    # Released at 224 px; MuSc's published DINO rows use 256 and 512 px.
    return VitArch(name, "dino", 768, 12, 12, patch, 224 // patch, 512, _DINO_URL.format(stem=stem))


ARCHITECTURES: dict[str, VitArch] = {
    a.name: a
    for a in (
        _dinov2("dinov2_vits14", 384, 12, 6),
        _dinov2("dinov2_vitb14", 768, 12, 12),
        _dinov2("dinov2_vitl14", 1024, 24, 16),
        _dinov2("dinov2_vitg14", 1536, 40, 24, ffn="swiglu"),
        _dino("dino_vitb16", "dino_vitbase16", 16),
        _dino("dino_vitb8", "dino_vitbase8", 8),
    )
}


def get_arch(name: str) -> VitArch | None:
    """The DINO-family architecture called ``name``, or None for any other model name."""
    return ARCHITECTURES.get(name)
