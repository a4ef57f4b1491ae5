"""zsad.export: encoder -> checked deployment bundle (FP32 + FP16 ONNX, optional TensorRT engine).

``pipeline.export_bundle`` (needs torch) writes the bundle; ``engine.add_engine`` and ``fp16``
need no torch, so an engine can be built on the target machine from a copied bundle.
"""
