"""Triton Python-backend model: HeadCLIP scoring (NumPy zsad.scoring) on the encoder's outputs.

The second step of the HeadCLIP ensemble, so a thin client sends an image and gets a score and
a map. The server's Python needs zsad importable (numpy, scipy, safetensors); the calibration
artifact sits beside this file, checked against its SHA-256 when the model loads.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

# The backend's stub embeds Python without reading PYTHONPATH; honour it, so a zsad that is not
# installed in the server's environment (a source checkout) can serve too.
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]

from zsad.formats.artifact import load_artifact  # noqa: E402
from zsad.scoring.headclip import score_headclip  # noqa: E402


class TritonPythonModel:
    """Scores (cls, local) batches with the artifact's text embeddings and JAS settings."""

    def initialize(self, args: dict[str, Any]) -> None:
        """Load and verify the calibration artifact."""
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        self.artifact = load_artifact(folder / "calibration.safetensors")
        self.image_size = self.artifact.image_size
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        """Score each request's batch; returns (N, 1) scores and (N, S, S) maps."""
        hp = self.artifact.hyperparameters
        responses = []
        for request in requests:
            cls = pb_utils.get_input_tensor_by_name(request, "cls").as_numpy()
            local = pb_utils.get_input_tensor_by_name(request, "local").as_numpy()
            scores, maps = score_headclip(
                cls,
                local,
                self.artifact.text_embeddings,
                image_size=self.image_size,
                r=hp["jas_r"],
                top_k=hp["top_k"],
                temperature=hp["temperature"],
                sigma=hp["sigma"],
            )
            values = [scores.reshape(-1, 1), maps]
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(v, np.float32))
                for name, v in zip(self.outputs, values, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
