"""Triton Python-backend model: the bundle's encoder on ONNX Runtime, one call per batch.

For servers without the onnxruntime backend (a CPU-only tritonserver); Triton's dynamic batcher
hands ``execute`` several requests at once, which run as one ONNX Runtime batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Runs model.onnx from this version folder on the CPU (or CUDA on a KIND_GPU instance)."""

    def initialize(self, args: dict[str, Any]) -> None:
        """Open the ONNX Runtime session."""
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.outputs = [o["name"] for o in config["output"]]
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU":
            providers.insert(0, "CUDAExecutionProvider")
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)

    def execute(self, requests: list[Any]) -> list[Any]:
        """Encode every request's images in one batch and split the outputs back."""
        batches = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        values = self.session.run(self.outputs, {self.input_name: np.concatenate(batches)})
        responses, start = [], 0
        for batch in batches:
            stop = start + len(batch)
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(value[start:stop], np.float32))
                for name, value in zip(self.outputs, values, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = stop
        return responses
