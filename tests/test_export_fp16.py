"""The FP16 pass on small hand-made graphs: islands, casts, constants, range errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from zsad.errors import ZsadError
from zsad.export.fp16 import convert_to_fp16


def _graph(weight: np.ndarray) -> onnx.ModelProto:
    """x @ W -> LayerNorm -> Softmax -> * 2 (a Constant node), plus x + Cast(int constant)."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("LayerNormalization", ["h", "scale", "bias"], ["n"], axis=-1),
        helper.make_node("Softmax", ["n"], ["p"], axis=-1),
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.float32(2.0))),
        helper.make_node("Mul", ["p", "two"], ["y"]),
        helper.make_node("Cast", ["offset"], ["offset_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "offset_f"], ["z"]),
    ]
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.ones(4, np.float32), "scale"),
        numpy_helper.from_array(np.zeros(4, np.float32), "bias"),
        numpy_helper.from_array(np.array(3, np.int64), "offset"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_islands_stay_fp32_and_outputs_match() -> None:
    weight = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    fp32 = _graph(weight)
    fp16 = convert_to_fp16(fp32)
    graph = onnx.shape_inference.infer_shapes(fp16).graph
    types = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
    types.update({t.name: t.data_type for t in graph.initializer})
    by_op = {n.op_type: n for n in graph.node if not n.name.endswith("_cast")}
    assert types[by_op["MatMul"].input[1]] == TensorProto.FLOAT16
    assert types[by_op["LayerNormalization"].input[0]] == TensorProto.FLOAT
    assert types[by_op["Softmax"].output[0]] == TensorProto.FLOAT
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in graph.output)
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    expected = ort.InferenceSession(fp32.SerializeToString()).run(None, {"x": x})
    got = ort.InferenceSession(fp16.SerializeToString()).run(None, {"x": x})
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_allclose(a, b, atol=5e-3, rtol=5e-3)


def test_constants_beyond_the_fp16_range_are_an_error() -> None:
    with pytest.raises(ZsadError, match="beyond the FP16 range"):
        convert_to_fp16(_graph(np.full((4, 4), 1e6, np.float32)))
