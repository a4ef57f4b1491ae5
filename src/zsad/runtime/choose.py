"""Which runtime runs a bundle's ONNX file: --backend auto|onnxruntime|openvino.

``auto`` keeps ONNX Runtime where it has a CUDA provider. Without one, on an Intel CPU, it picks
OpenVINO when installed: at fp32 it ran a ViT-B/16 about 1.9x faster than ONNX Runtime's CPU
provider on an Intel Xeon, while on an AMD EPYC (Zen 4) the two were level (docs/benchmarks.md),
so AMD and ARM CPUs stay on ONNX Runtime, the reference the parity tests pin.
"""

from __future__ import annotations

import importlib.util
import platform

from zsad.errors import ZsadError, echo_stderr

BACKENDS = ("auto", "onnxruntime", "openvino")
X86 = ("x86_64", "amd64")


def choose_backend(backend: str, device: str, precision: str | None) -> str:
    """'onnxruntime' or 'openvino' for --backend/--device/--precision; says why on stderr when
    --device auto picks OpenVINO."""
    if backend not in BACKENDS:
        raise ZsadError(f"--backend {backend}: choose {', '.join(BACKENDS)}")
    if backend == "onnxruntime" and precision not in (None, "fp32"):
        raise ZsadError(
            f"--precision {precision}: ONNX Runtime runs the bundle's fp32 file (or fp16 on "
            "CUDA); bf16 and int8 are --backend openvino's"
        )
    if backend != "auto":
        return backend
    if precision not in (None, "fp32") or device == "gpu":
        return "openvino"  # only OpenVINO offers these
    if device != "auto" or not _openvino_beats_onnxruntime():
        return "onnxruntime"
    echo_stderr(
        "--device auto: OpenVINO on the CPU (an Intel CPU and no CUDA provider here: OpenVINO "
        "runs ViT encoders about 1.9x faster than ONNX Runtime on Intel); --backend onnxruntime "
        "keeps ONNX Runtime"
    )
    return "openvino"


def check_engine_backend(backend: str, precision: str | None) -> None:
    """An engine runs on TensorRT: refuse --backend and --precision."""
    if backend != "auto" or precision not in (None, "fp32"):
        raise ZsadError(
            "--engine runs on TensorRT at the precision it was built with; --backend openvino "
            "and --precision take a bundle folder or its .onnx file"
        )


def cpu_vendor() -> str:
    """The CPU's vendor string (GenuineIntel, AuthenticAMD, ...), or '' where it is not known."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    processor = platform.processor()  # Windows: "Intel64 Family 6 ..., GenuineIntel"
    return "GenuineIntel" if "Intel" in processor else ""


def _openvino_beats_onnxruntime() -> bool:
    """Whether this is an Intel x86-64 CPU with OpenVINO and no CUDA provider in ONNX Runtime."""
    if platform.machine().lower() not in X86 or cpu_vendor() != "GenuineIntel":
        return False
    if importlib.util.find_spec("openvino") is None:
        return False
    try:
        import onnxruntime
    except ImportError:
        return True
    return "CUDAExecutionProvider" not in onnxruntime.get_available_providers()
