"""The PyTorch reference backend: a DualPathEncoder behind the runtime's backend interface."""

from __future__ import annotations

import numpy as np
import torch

from zsad.model.encoder import DualPathEncoder
from zsad.model.vit import TapEncoder
from zsad.runtime.backend import Lifecycle


class TorchBackend(Lifecycle):
    """Runs an encoder (CLIP or DINO) eagerly on CPU or CUDA, optionally under FP16 autocast."""

    def __init__(
        self, encoder: DualPathEncoder | TapEncoder, device: str = "auto", fp16: bool = False
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()
        self.fp16 = fp16 and self.device.type == "cuda"
        self.image_size = encoder.image_size
        self.mean, self.std = encoder.mean, encoder.std
        self.outputs = encoder.outputs
        self.name = f"torch-{'fp16' if self.fp16 else 'fp32'}-{self.device.type}"

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Encode a float32 batch (B, 3, S, S) and return NumPy arrays."""
        x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(self.device)
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16),
        ):
            out = self.encoder(x)
        return {
            name: getattr(out, name).float().cpu().numpy()
            for name in self.outputs
            if getattr(out, name) is not None
        }

    def close(self) -> None:
        """Move the weights off the GPU and return the cached CUDA memory."""
        self.encoder.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
