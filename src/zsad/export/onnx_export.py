"""An encoder (CLIP or DINO) -> FP32 ONNX: fixed image size, dynamic batch, outputs named
cls/taps/local."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from zsad.errors import ZsadError
from zsad.formats.atomic import atomic_open
from zsad.model.encoder import DualPathEncoder
from zsad.model.vit import TapEncoder

OPSET = 18  # >= 17 keeps LayerNormalization one node; 18 is the exporter's native opset
INPUT_NAME = "pixels"
# Protobuf cannot serialise one file past 2 GiB; ViT-L's image tower is about 1.2 GB in FP32.
_MAX_PROTO_BYTES = 2**31 - 1


class _Outputs(nn.Module):
    """Return the encoder's requested outputs as a plain tuple, in OUTPUTS order."""

    def __init__(self, encoder: DualPathEncoder | TapEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.encoder(pixels)
        return tuple(getattr(out, name) for name in self.encoder.outputs)


def export_onnx(encoder: DualPathEncoder | TapEncoder, path: Path) -> onnx.ModelProto:
    """Export the encoder on CPU in FP32 with the torch.export-based exporter; returns the model."""
    try:
        import onnxscript.optimizer
    except ImportError as exc:
        raise ZsadError(
            "zsad export needs onnxscript (torch's ONNX exporter uses it): "
            "pip install 'zsad[export]'"
        ) from exc
    wrapper = _Outputs(encoder.float().cpu().eval()).eval()
    size = encoder.image_size
    example = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=list(encoder.outputs),
            dynamic_shapes={"pixels": {0: batch}},
            optimize=False,
            verbose=False,
        )
    # Fold every constant subgraph (weight slices and transposes of the CSA path included), so
    # the FP16 pass and TensorRT see plain initializers; the exporter's default limits skip them.
    model = onnxscript.optimizer.optimize(
        program.model_proto, input_size_limit=1 << 40, output_size_limit=1 << 40
    )
    if model.ByteSize() > _MAX_PROTO_BYTES:
        raise ZsadError(
            "this backbone's ONNX graph is over 2 GiB; single-file bundles support up to ViT-L"
        )
    check_graph(model, encoder.outputs, size)
    save_model(model, path)
    return model


def check_graph(model: onnx.ModelProto, outputs: tuple[str, ...], image_size: int) -> None:
    """ONNX checker, then the interface and the one-node LayerNorm that the FP16 pass relies on."""
    onnx.checker.check_model(model)
    graph = model.graph
    names = tuple(o.name for o in graph.output)
    if names != tuple(outputs):
        raise ZsadError(f"exported outputs {names} differ from the requested {tuple(outputs)}")
    dims = [d.dim_value or d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    if dims[1:] != [3, image_size, image_size] or not isinstance(dims[0], str):
        raise ZsadError(
            f"exported input shape {dims}: expected (batch, 3, {image_size}, {image_size})"
        )
    if not any(n.op_type == "LayerNormalization" for n in graph.node):
        raise ZsadError("exported graph has no LayerNormalization node (LayerNorm was split)")


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Write an ONNX model atomically as one file."""
    with atomic_open(path, "wb") as handle:
        handle.write(model.SerializeToString())
