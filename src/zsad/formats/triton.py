"""What a zsad Triton model repository promises its clients: model names, and the parameters in
each config.pbtxt that carry the bundle's metadata, so a client can check what it talks to."""

from __future__ import annotations

# config.pbtxt parameters (string values)
PARAM_BUNDLE = "zsad_bundle"  # bundle.json as JSON: image size, mean/std, method, outputs, hashes
PARAM_FILE = "zsad_file"  # the bundle file this model serves (encoder.onnx, ...)
PARAM_CALIBRATION = "zsad_calibration"  # HeadCLIP: calibration.safetensors, base64

# Model names inside a repository: NAME serves the FP32 ONNX file on ONNX Runtime, NAME + suffix
# the other forms.
SUFFIXES = {
    "onnx": "",
    "fp16": "_fp16",
    "trt": "_trt",
    "python": "_python",
    "openvino": "_openvino",
    "headclip": "_headclip",  # ensemble: encoder + scorer, image in, score and map out
    "scorer": "_headclip_scorer",
}
# What the HeadCLIP ensemble returns.
SCORE_OUTPUT = "score"
MAP_OUTPUT = "anomaly_map"
