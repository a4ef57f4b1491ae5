"""Host and GPU memory of a run, from the shapes alone: the encoder's weights and activations,
what scoring keeps per image, MSM's working set, and a stream's bank.

The model follows what the code allocates. The encoder holds its weights and, per image in
flight, one block's activations: the attention scores (heads x T^2, heads = width / 64 in every
supported ViT), the residual stream, its normed copy, Q, K, V, the attention output and the
MLP's hidden layer. Scoring keeps each image's taps (float16) and one float32 map per expert
(tap, r); one MSM call holds its features in the working dtype (float32 on the CPU, float16 on
the GPU), the float32 (N, P, K) table and buffers bounded by ``memory_budget_mb`` (the tile and
the top-k step, each at most the budget). A stream's bank is one (E, K, P, C) ring in the
working dtype. Libraries, the CUDA context and the operating system are not counted here: the
callers add what their platform takes.
"""

from __future__ import annotations

from dataclasses import dataclass

from zsad.formats.backbones import VitArch

# float32 and float16 bytes.
FP32, FP16 = 4, 2
# Each supported ViT's attention heads are this wide.
HEAD_WIDTH = 64
# MSM's default memory_budget_mb (zsad.scoring.msm.mutual_scores), and in bytes.
MSM_BUDGET_MB = 64.0
MSM_BUDGET = int(MSM_BUDGET_MB * 2**20)
# LNAMD on the GPU takes images in chunks of at most this much float32 input per launch; its
# temporaries take about 4x the chunk. On the CPU it takes one image at a time, whose float32
# copy and float64 deviations from the mean are its largest temporaries.
LNAMD_GPU_CHUNK = 256 * 2**20


@dataclass(frozen=True)
class ScoringShape:
    """What a run scores per image: T tokens (1 + P patches) of ``channels`` at each of ``taps``
    layers, one map per expert (tap, r), and a CLS embedding of ``cls`` channels."""

    taps: int
    tokens: int
    channels: int
    experts: int
    cls: int = 0

    @property
    def patches(self) -> int:
        """Patches per image (the tokens without CLS)."""
        return self.tokens - 1


@dataclass(frozen=True)
class Footprint:
    """Bytes a run takes on the host and on the GPU (0 when it runs on the CPU)."""

    host: int
    gpu: int


def vit_parameters(arch: VitArch) -> int:
    """A DINO-family ViT's parameter count: its blocks, patch embedding, positions and norms."""
    w, hidden = arch.width, arch.mlp_hidden
    mlp_in = 2 * hidden if arch.ffn == "swiglu" else hidden
    block = 4 * w * w + 4 * w + w * mlp_in + mlp_in + hidden * w + w + 4 * w
    if arch.layer_scale:
        block += 2 * w
    embedding = 3 * arch.patch_size**2 * w + w + (arch.pos_grid**2 + 2) * w
    return arch.depth * block + embedding + 2 * w


def activation_bytes(width: int, tokens: int, batch: int, itemsize: int) -> int:
    """One block's activations for ``batch`` images in flight: the attention scores, six
    (T, width) buffers and the MLP's (T, 4 x width) hidden layer."""
    heads = max(1, width // HEAD_WIDTH)
    return batch * (heads * tokens * tokens + 10 * tokens * width) * itemsize


def kept_per_image(shape: ScoringShape) -> int:
    """What a set keeps per image until it is scored: float16 taps, the float32 CLS embedding
    and float32 expert maps."""
    taps = shape.taps * shape.tokens * shape.channels * FP16
    return taps + shape.cls * FP32 + shape.experts * shape.patches * FP32


def pair_bytes(shape: ScoringShape) -> int:
    """What each (image, reference) pair adds: one float32 cell per patch of MSM's table."""
    return shape.patches * FP32


def msm_buffers(n: int, k: int, shape: ScoringShape, itemsize: int) -> int:
    """One MSM call's own allocations for N query images against K references: the float32
    table, the tile and the top-k step (each bounded by the default budget), the scores."""
    p = shape.patches
    tile = min(MSM_BUDGET, n * p * p * itemsize)
    top_k = min(MSM_BUDGET, 2 * n * p * k * FP32)
    return n * p * k * FP32 + tile + top_k + n * p * FP32


def lnamd_temporaries(n: int, shape: ScoringShape, gpu: bool) -> int:
    """LNAMD's largest temporaries while it makes the features of N images."""
    image = shape.patches * shape.channels
    if gpu:
        return 4 * min(n * image * FP32, LNAMD_GPU_CHUNK)
    return image * (FP32 + 2 * FP32)


def set_footprint(n: int, shape: ScoringShape, gpu: bool) -> Footprint:
    """Scoring a set of N (one expert at a time): every image's taps and maps on the host, and
    where scoring runs the larger of two moments: an expert's float32 LNAMD features made while
    the last expert's still live, or one expert's features (on the GPU with their float16 copy)
    and its MSM call."""
    features = n * shape.patches * shape.channels * FP32
    kept = n * kept_per_image(shape)
    making = 2 * features + lnamd_temporaries(n, shape, gpu)
    if not gpu:
        return Footprint(kept + max(making, features + msm_buffers(n, n, shape, FP32)), 0)
    tap = n * shape.tokens * shape.channels * FP16
    msm = features + features // 2 + msm_buffers(n, n, shape, FP16)
    return Footprint(kept, tap + max(making, msm))


def bank_footprint(k: int, shape: ScoringShape, gpu: bool) -> Footprint:
    """A stream with a bank of K: the (E, K, P, C) ring in the working dtype where scoring runs,
    plus one arriving image's taps, maps, features and MSM call against the bank."""
    itemsize = FP16 if gpu else FP32
    ring = shape.experts * k * shape.patches * shape.channels * itemsize
    query = shape.patches * shape.channels * FP32 + msm_buffers(1, k, shape, itemsize)
    if not gpu:
        return Footprint(ring + kept_per_image(shape) + query, 0)
    return Footprint(kept_per_image(shape), ring + query)


def encoder_footprint(weights: int, width: int, tokens: int, batch: int, gpu: bool) -> Footprint:
    """The encoder: its weights file's bytes and one block's activations at ``batch``, float16
    on the GPU, float32 on the host."""
    itemsize = FP16 if gpu else FP32
    used = weights + activation_bytes(width, tokens, batch, itemsize)
    return Footprint(0, used) if gpu else Footprint(used, 0)


def total(*parts: Footprint) -> Footprint:
    """The sum of footprints."""
    return Footprint(sum(p.host for p in parts), sum(p.gpu for p in parts))
