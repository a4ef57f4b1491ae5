"""Where an encoder comes from: an exported bundle or engine (torch-free), or an open_clip model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zsad.arrays import array_module, check_outputs_on
from zsad.errors import ZsadError
from zsad.formats.backbones import get_arch
from zsad.formats.bundle import ENGINE_SUFFIXES, Bundle
from zsad.formats.urls import read_secret
from zsad.runtime.backend import EncoderBackend
from zsad.scoring.pipeline import METHODS as SET_METHODS

if TYPE_CHECKING:
    from zsad.runtime.triton_backend import TritonBackend

# Two kinds of import stay inside functions: zsad.model (torch, open_clip), where a PyTorch
# encoder is built, since bundles, engines and Triton run without torch; and the runtimes
# (zsad.runtime.open, onnx_backend, triton_backend), where an encoder opens, since the command
# line imports this module and `zsad --help` must not load them.

DEFAULT_MODEL = "ViT-L-14-336"
# The ViT-L/14 methods were published at 518 px (37 x 37 patches); other models default to the
# input size they were built for.
PAPER_IMAGE_SIZE = 518
PAPER_MODELS = ("ViT-L-14-336", "ViT-L-14")


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder to open: a bundle or engine when given, else the open_clip ``model``."""

    model: str = DEFAULT_MODEL
    weights: Path | None = None
    pretrained: str | None = None  # None: the model's standard release (openai, meta)
    image_size: int | None = None  # None: the bundle's, else the model's default
    device: str = "auto"
    bundle: Path | None = None
    engine: Path | None = None
    backend: str = "auto"  # what runs a bundle: auto, onnxruntime or openvino
    precision: str | None = None  # OpenVINO's fp32 (default), bf16 or int8
    triton: str | None = None  # a Triton server URL: the encoder runs there
    triton_model: str | None = None
    triton_timeout_s: float = 30.0
    triton_ca: Path | None = None  # the CA that signed a grpcs:// or https:// server's certificate
    triton_token_file: Path | None = None  # else $ZSAD_TRITON_TOKEN, if set

    @property
    def deployed(self) -> bool:
        """Whether it runs from a bundle, an engine or a Triton server (no torch)."""
        return self.bundle is not None or self.engine is not None or self.triton is not None

    @property
    def runs_bundle(self) -> bool:
        """Whether a bundle or engine runs on this machine (ONNX Runtime or TensorRT)."""
        return self.triton is None and (self.bundle is not None or self.engine is not None)

    def bundle_root(self) -> Path | None:
        """The bundle folder behind --bundle/--engine, or None for a model or a server."""
        if self.triton is not None:
            return None
        path = self.engine if self.engine is not None else self.bundle
        if path is None:
            return None
        return path if path.is_dir() else path.parent

    def check_device(self) -> None:
        """Fail early, in one line, when --device cuda cannot be honoured here."""
        local_runtime = self.backend != "auto" or self.precision is not None
        if (local_runtime or self.device == "gpu") and (self.bundle is None or self.triton):
            raise ZsadError(
                "--backend, --precision and --device gpu choose what runs a bundle here: "
                "pass --bundle DIR (not --model or --triton)"
            )
        if self.device != "cuda" or self.engine is not None or self.triton is not None:
            return
        if self.backend == "openvino":
            return  # its own one-line error, when the bundle opens
        if self.deployed:
            from zsad.runtime.onnx_backend import resolve_providers

            resolve_providers("cuda")
            return
        require_torch(f"--model {self.model}")
        from zsad.model.cuda import cuda_available

        if not cuda_available():
            raise ZsadError("--device cuda: PyTorch sees no CUDA GPU here; use --device cpu")

    def describe(self) -> str:
        """What the user named: the server's model, the bundle, the engine or the model."""
        if self.triton is not None:
            return f"{self.triton}/{self.triton_model}"
        return str(self.bundle or self.engine or self.model)


def require_torch(what: str, alternative: str = "") -> None:
    """Fail with one line naming the export extra when torch or open_clip is not installed."""
    try:
        import zsad.model  # noqa: F401  (fails here without torch or open_clip)
    except ImportError as exc:
        raise ZsadError(
            f"{what} needs the export extra ({exc.name} is missing): pip install 'zsad[export]'"
            + alternative
        ) from exc


@dataclass
class Deployment:
    """What a spec's bundle or server holds, read once per open: bundle.json, or the connection
    to the served model, whose config carries its bundle's metadata."""

    bundle: Bundle | None = None  # None: an open_clip model
    served: TritonBackend | None = None

    @property
    def method(self) -> str | None:
        """The method the bundle or served model was exported for (None: a model)."""
        return None if self.bundle is None else self.bundle.method

    def close(self) -> None:
        """Drop the server connection when no encoder took it over."""
        if self.served is not None:
            self.served.close()


def read_deployment(spec: EncoderSpec) -> Deployment:
    """Read ``spec``'s bundle.json, or connect to its served model (nothing for a model)."""
    if spec.triton is not None:
        served = open_triton(spec)
        return Deployment(served.bundle, served)
    if spec.bundle is not None and spec.engine is not None:
        raise ZsadError("--bundle and --engine: give one of them")
    if spec.engine is not None and spec.engine.suffix not in ENGINE_SUFFIXES:
        raise ZsadError(
            f"--engine {spec.engine}: expected an .engine or .plan file from zsad export"
        )
    if spec.bundle is not None and spec.bundle.suffix in ENGINE_SUFFIXES:
        raise ZsadError(f"--bundle {spec.bundle}: this is an engine file; pass it with --engine")
    path = spec.engine if spec.engine is not None else spec.bundle
    if path is None:
        return Deployment()
    if not path.exists():
        raise ZsadError(f"{path}: no such file or directory")
    return Deployment(Bundle.load(path if path.is_dir() else path.parent))


def open_triton(spec: EncoderSpec) -> TritonBackend:
    """Connect to the served encoder; with --bundle too, the served file must be that bundle's."""
    from zsad.runtime.triton_backend import TOKEN_ENV, TritonBackend, parse_url

    parse_url(spec.triton)  # first: a URL with credentials must not be repeated in a message
    if spec.engine is not None:
        raise ZsadError("--triton and --engine: the engine runs on the server; give one of them")
    if not spec.triton_model:
        raise ZsadError(f"--triton {spec.triton}: needs --triton-model NAME (from zsad triton)")
    expect = None if spec.bundle is None else Bundle.load(spec.bundle)
    backend = TritonBackend(
        spec.triton,
        spec.triton_model,
        timeout_s=spec.triton_timeout_s,
        expect=expect,
        ca_file=spec.triton_ca,
        # Read at each connect, so a station that reconnects picks up a rotated token.
        token=read_secret(TOKEN_ENV, spec.triton_token_file, "Triton token"),
    )
    if spec.image_size is not None and spec.image_size != backend.image_size:
        backend.close()
        raise ZsadError(
            f"--image-size {spec.image_size}: {backend.where} serves {backend.image_size} px"
        )
    return backend


def model_image_size(model: str, image_size: int | None) -> int:
    """``image_size``, else 518 for the ViT-L/14 CLIP models, MuSc's size for the DINO models
    (518 for DINOv2, 512 for DINO), else the model's own input size."""
    if image_size is not None:
        return image_size
    if model in PAPER_MODELS:
        return PAPER_IMAGE_SIZE
    arch = get_arch(model)
    if arch is not None:
        return arch.default_image_size
    from zsad.model.loading import clip_image_size

    return clip_image_size(model, PAPER_IMAGE_SIZE)


def set_outputs_on(spec: EncoderSpec, method: str, scoring_device: str) -> str:
    """'device' when a bundle's or engine's outputs feed STAPS/MuSc set scoring on CuPy (the
    taps then never leave the GPU), else 'host'."""
    if not spec.runs_bundle or method not in SET_METHODS:
        return "host"
    return "host" if array_module(scoring_device) is np else "device"


def open_encoder(
    spec: EncoderSpec,
    outputs: tuple[str, ...],
    *,
    taps: tuple[int, ...] | None = None,
    outputs_on: str = "host",
    deployment: Deployment | None = None,
) -> EncoderBackend:
    """The bundle (ONNX Runtime) or engine (TensorRT) backend when given, else the torch one.

    ``outputs_on="device"`` (a bundle or engine only) keeps the outputs on the GPU as CuPy arrays.
    ``deployment``: what read_deployment(spec) already read, so that it is not read again; a
    server connection in it becomes the returned encoder.
    """
    if check_outputs_on(outputs_on) == "device" and not spec.runs_bundle:
        raise ZsadError(
            f"{spec.describe()}: outputs_on='device' needs a bundle or engine run here, not a "
            "Triton server or a PyTorch model"
        )
    if not spec.deployed:
        return _torch_backend(spec, outputs, taps)
    deployment = deployment or read_deployment(spec)
    if deployment.served is not None:
        return _checked_outputs(deployment.served, outputs, spec.describe())
    path = spec.engine if spec.engine is not None else spec.bundle
    assert path is not None
    from zsad.runtime.open import open_backend

    backend = open_backend(
        path,
        device=spec.device,
        image_size=spec.image_size,
        outputs_on=outputs_on,
        backend=spec.backend,
        precision=spec.precision,
        bundle=deployment.bundle,
    )
    return _checked_outputs(backend, outputs, str(path))


def _checked_outputs(
    backend: EncoderBackend, outputs: tuple[str, ...], where: str
) -> EncoderBackend:
    missing = [name for name in outputs if name not in backend.outputs]
    if missing:
        backend.close()
        method = backend.bundle.method  # type: ignore[attr-defined]
        raise ZsadError(
            f"{where}: exported for --method {method} (outputs {', '.join(backend.outputs)}); "
            f"this needs {', '.join(outputs)}"
        )
    return backend


def _torch_backend(
    spec: EncoderSpec, outputs: tuple[str, ...], taps: tuple[int, ...] | None
) -> EncoderBackend:
    require_torch(f"--model {spec.model}", "; or run a bundle with --bundle")
    from zsad.model import build_encoder, load_backbone
    from zsad.model.backend import TorchBackend

    size = model_image_size(spec.model, spec.image_size)
    backbone = load_backbone(spec.model, weights=spec.weights, pretrained=spec.pretrained)
    encoder = build_encoder(backbone, image_size=size, taps=taps, outputs=outputs)
    return TorchBackend(encoder, device=spec.device)
