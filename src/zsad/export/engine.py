"""One engine builder for TensorRT-RTX and full TensorRT: strongly typed, batch profile, progress.

The network is built strongly typed from the FP16 ONNX file, so the precision of every layer is
the one written in the file (FP32 islands included) and the builder needs no FP16 flag, which
TensorRT-RTX does not have anyway. TensorRT-RTX builds ahead of time without a GPU and targets
the compute capabilities it is given (Turing, 7.5, only when asked); full TensorRT builds for
the GPU it runs on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zsad.errors import ZsadError
from zsad.formats.atomic import atomic_open
from zsad.formats.bundle import ENGINE_FILE, FP16_ONNX, Bundle, sha256_file, write_meta
from zsad.runtime.tensorrt_backend import FLAVOURS, gpu_compute_capability, import_tensorrt

# What a TensorRT-RTX engine runs on when no compute capability is set (its documentation:
# Ampere and later; Turing only on request; no SM90 in its list).
RTX_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0", "12.1")


@dataclass(frozen=True)
class BuiltEngine:
    """What bundle.json records about a build."""

    flavour: str
    tensorrt_version: str
    compute_capabilities: tuple[str, ...]
    batch: tuple[int, int, int]  # min, opt, max of the optimisation profile
    seconds: float
    bytes: int


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_compute_capabilities(text: str | None) -> tuple[str, ...]:
    """'7.5,8.6' -> ('7.5', '8.6'); empty or None -> ()."""
    if not text:
        return ()
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    for value in values:
        major, _, minor = value.partition(".")
        if not (major.isdigit() and minor.isdigit()):
            raise ZsadError(f"--compute-capability {value!r}: write it as MAJOR.MINOR, e.g. 8.6")
    return values


def _progress_monitor(trt: Any, log: Callable[[str], None]) -> Any:
    class Progress(trt.IProgressMonitor):
        """Print top-level build phases with their durations."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.started: dict[str, float] = {}
            self.top: set[str] = set()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.started[phase_name] = time.perf_counter()
            if parent_phase is None:
                self.top.add(phase_name)
                log(f"  {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True

        def phase_finish(self, phase_name: str) -> None:
            if phase_name in self.top:
                seconds = time.perf_counter() - self.started.pop(phase_name, time.perf_counter())
                log(f"  {phase_name} done in {seconds:.1f} s")

    return Progress()


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    flavour: str,
    image_size: int,
    input_name: str = "pixels",
    compute_capabilities: Sequence[str] = (),
    max_batch: int = 16,
    log: Callable[[str], None] = _log,
) -> BuiltEngine:
    """Parse ``onnx_path`` strongly typed and serialise an engine with a batch profile 1..max."""
    trt = import_tensorrt(flavour)
    label = FLAVOURS[flavour].label
    targets = _targets(trt, flavour, compute_capabilities)
    batch = (1, min(8, max_batch), max_batch)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise ZsadError(f"{onnx_path}: {label} cannot parse it ({errors})")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    shape = (3, image_size, image_size)
    profile.set_shape(input_name, *((b, *shape) for b in batch))
    config.add_optimization_profile(profile)
    if flavour == "rtx" and compute_capabilities:
        config.num_compute_capabilities = len(targets)
        for i, value in enumerate(targets):
            config.set_compute_capability(getattr(trt.ComputeCapability, _sm(value)), i)
    config.progress_monitor = _progress_monitor(trt, log)
    log(
        f"building a {label} {trt.__version__} engine for compute {', '.join(targets)}, "
        f"batch {batch[0]}..{batch[2]}"
    )
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise ZsadError(f"{label} could not build an engine from {onnx_path} (see its log above)")
    with atomic_open(engine_path, "wb") as handle:
        handle.write(serialized)
    size = engine_path.stat().st_size
    log(f"engine {engine_path} ({size / 1e6:.1f} MB) built in {seconds:.1f} s")
    return BuiltEngine(flavour, trt.__version__, targets, batch, round(seconds, 2), size)


def add_engine(
    root: Path,
    *,
    flavour: str,
    compute_capabilities: Sequence[str] = (),
    max_batch: int = 16,
    log: Callable[[str], None] = _log,
) -> dict[str, Any]:
    """Build (or rebuild) ROOT/encoder.engine from the bundle's FP16 ONNX and record it.

    Needs no torch: a bundle exported on a workstation gets its engine on the target machine,
    which full TensorRT requires (it builds for the GPU it runs on).
    """
    bundle = Bundle.load(root)
    built = build_engine(
        bundle.file(FP16_ONNX),
        root / ENGINE_FILE,
        flavour=flavour,
        image_size=bundle.image_size,
        input_name=bundle.meta["input"]["name"],
        compute_capabilities=compute_capabilities,
        max_batch=max_batch,
        log=log,
    )
    meta = dict(bundle.meta)
    meta["engine"] = {
        "file": ENGINE_FILE,
        "source": FP16_ONNX,
        "flavour": built.flavour,
        "tensorrt_version": built.tensorrt_version,
        "compute_capabilities": list(built.compute_capabilities),
        "batch": dict(zip(("min", "opt", "max"), built.batch, strict=True)),
        "build_seconds": built.seconds,
    }
    meta["tools"] = {**meta.get("tools", {}), FLAVOURS[flavour].package: built.tensorrt_version}
    meta["files"] = {
        **meta["files"],
        ENGINE_FILE: {"sha256": sha256_file(root / ENGINE_FILE), "bytes": built.bytes},
    }
    write_meta(root, meta)
    return meta


def _sm(value: str) -> str:
    return "SM" + value.replace(".", "")


def _targets(trt: Any, flavour: str, requested: Sequence[str]) -> tuple[str, ...]:
    if flavour == "trt":
        if requested:
            raise ZsadError(
                "--compute-capability applies to --engine rtx; full TensorRT builds for the GPU "
                "it runs on"
            )
        capability, _ = gpu_compute_capability(0)
        return (capability,)
    if not requested:
        return RTX_DEFAULT_TARGETS
    known = [m for m in trt.ComputeCapability.__members__ if m.startswith("SM")]
    for value in requested:
        if _sm(value) not in known:
            listed = ", ".join(f"{m[2:-1]}.{m[-1]}" for m in known)
            raise ZsadError(
                f"--compute-capability {value}: TensorRT-RTX {trt.__version__} targets {listed}"
            )
    return tuple(requested)
