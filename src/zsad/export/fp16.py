"""FP32 -> FP16 ONNX conversion that keeps LayerNorm, softmax and L2-normalisation in FP32.

The result is strongly typed: every tensor's precision is written in the graph (explicit Cast
nodes at island borders), so TensorRT-RTX, which only builds strongly typed networks, and full
TensorRT in strongly typed mode both run it as written. Model inputs and outputs stay FP32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from zsad.errors import ZsadError

# Ops that run in FP32 inside the FP16 graph: their reductions overflow or lose precision in
# FP16 when the residual stream carries outlier channels of magnitude in the hundreds.
FP32_ISLANDS = frozenset(
    {
        "LayerNormalization",
        "GroupNormalization",
        "InstanceNormalization",
        "RMSNormalization",
        "Softmax",
        "LogSoftmax",
        "ReduceL2",
        "LpNormalization",
    }
)
# Ops that take the precision of their non-constant inputs, so that data movement and the tail of
# an L2-normalisation (clip, expand, divide) after an island stay FP32 until real compute follows.
_FOLLOWERS = frozenset(
    {
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Flatten",
        "Gather",
        "Slice",
        "Concat",
        "Split",
        "Expand",
        "Where",
        "Clip",
        "Max",
        "Min",
        "Div",
        "Sqrt",
        "Cast",
    }
)
_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)
_FP16_MAX = float(np.finfo(np.float16).max)


def convert_to_fp16(
    model: onnx.ModelProto, *, fp32_ops: frozenset[str] = FP32_ISLANDS
) -> onnx.ModelProto:
    """Return an FP16 copy of an FP32 model; ops in ``fp32_ops`` stay FP32 (see module doc)."""
    model = _constants_to_initializers(model)
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    elem_types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*inferred.input, *inferred.output, *inferred.value_info)
    }
    initializers = {t.name: t for t in graph.initializer}
    elem_types.update({name: t.data_type for name, t in initializers.items()})
    if any(elem_types.get(v.name) != TensorProto.FLOAT for v in graph.input):
        raise ZsadError("FP16 conversion expects an FP32 model with FP32 inputs")

    precision = {v.name: TensorProto.FLOAT for v in graph.input}
    casts: dict[tuple[str, int], str] = {}
    constant_uses: set[tuple[str, int]] = set()
    nodes: list[onnx.NodeProto] = []

    def as_type(name: str, target: int) -> str:
        if name in initializers:
            constant_uses.add((name, target))
            return name if target == TensorProto.FLOAT else f"{name}__fp16"
        if precision[name] == target:
            return name
        key = (name, target)
        if key not in casts:
            suffix = "fp16" if target == TensorProto.FLOAT16 else "fp32"
            casts[key] = f"{name}__{suffix}"
            nodes.append(
                helper.make_node("Cast", [name], [casts[key]], to=target, name=casts[key] + "_cast")
            )
        return casts[key]

    for node in graph.node:
        if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for a in node.attribute
        ):
            raise ZsadError(f"FP16 conversion: control-flow node {node.op_type} is not supported")
        float_inputs = [i for i in node.input if i and elem_types.get(i) in _FLOATS]
        target = _node_precision(node, float_inputs, initializers, precision, fp32_ops)
        if node.op_type == "Cast":  # takes any input type; only its target type changes
            constant_uses.update((i, TensorProto.FLOAT) for i in float_inputs if i in initializers)
            for attr in node.attribute:
                if attr.name == "to" and attr.i in _FLOATS:
                    attr.i = target
        else:
            for k, name in enumerate(node.input):
                if name in float_inputs:
                    node.input[k] = as_type(name, target)
        for out in node.output:
            if elem_types.get(out) in _FLOATS:
                precision[out] = target
        nodes.append(node)

    for out in graph.output:
        if precision.get(out.name) == TensorProto.FLOAT16:
            _rename_value(nodes, out.name, f"{out.name}__fp16")
            precision[f"{out.name}__fp16"] = TensorProto.FLOAT16
            nodes.append(
                helper.make_node(
                    "Cast",
                    [f"{out.name}__fp16"],
                    [out.name],
                    to=TensorProto.FLOAT,
                    name=f"{out.name}_to_fp32",
                )
            )

    new_initializers = []
    for name, tensor in initializers.items():
        if tensor.data_type != TensorProto.FLOAT:
            new_initializers.append(tensor)
            continue
        if (name, TensorProto.FLOAT) in constant_uses:
            new_initializers.append(tensor)
        if (name, TensorProto.FLOAT16) in constant_uses:
            new_initializers.append(_to_fp16_tensor(tensor, f"{name}__fp16"))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(new_initializers)
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def _node_precision(
    node: onnx.NodeProto,
    float_inputs: list[str],
    initializers: dict[str, onnx.TensorProto],
    precision: dict[str, int],
    fp32_ops: frozenset[str],
) -> int:
    if node.op_type in fp32_ops:
        return TensorProto.FLOAT
    if node.op_type in _FOLLOWERS and any(
        precision.get(i) == TensorProto.FLOAT for i in float_inputs if i not in initializers
    ):
        return TensorProto.FLOAT
    return TensorProto.FLOAT16


def _constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy the model with Constant nodes turned into initializers, so one rule covers both."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    kept = []
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def _to_fp16_tensor(tensor: onnx.TensorProto, name: str) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor)
    finite = np.isfinite(values)
    if np.any(np.abs(values[finite]) > _FP16_MAX):
        raise ZsadError(
            f"FP16 conversion: constant {tensor.name} has values beyond the FP16 range "
            f"(max |x| {float(np.abs(values[finite]).max()):.3g})"
        )
    return numpy_helper.from_array(values.astype(np.float16), name)


def _rename_value(nodes: list[onnx.NodeProto], old: str, new: str) -> None:
    for node in nodes:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new
        for k, name in enumerate(node.output):
            if name == old:
                node.output[k] = new
