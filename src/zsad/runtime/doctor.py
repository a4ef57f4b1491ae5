"""`zsad doctor`: what this machine offers, what a bundle needs, what `--device auto` picks, and
every mismatch between them in one line each.

Every probe is lazy and forgiving: a package that is missing or a driver that does not answer is
reported as such, never raised, so the report also works on the machine that cannot run anything.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
from pathlib import Path
from typing import Any

from zsad.errors import ZsadError
from zsad.formats.bundle import FP16_ONNX, FP32_ONNX, Bundle, EngineInfo
from zsad.formats.memory import ScoringShape, bank_footprint, encoder_footprint, total
from zsad.formats.methods import DEFAULT_BANK, DEFAULT_R_LIST
from zsad.runtime.choose import choose_backend
from zsad.runtime.onnx_backend import CUDA
from zsad.runtime.tensorrt_backend import FLAVOURS, gpu_details, import_tensorrt

# The CPU flags that decide how fast the encoder and the scoring run; "amx" stands for amx_*.
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx")


def cpu(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU's model, vendor, architecture and which of VECTOR_FLAGS it has."""
    info = {"model": platform.processor() or "unknown", "vendor": "", "flags": []}
    flags: set[str] = set()
    with contextlib.suppress(OSError), open(cpuinfo) as handle:
        for line in handle:
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                info["model"] = value.strip()
            elif key == "vendor_id":
                info["vendor"] = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    info["flags"] = [
        f for f in VECTOR_FLAGS if f in flags or any(x.startswith(f + "_") for x in flags)
    ]
    info["arch"] = platform.machine()
    return info


def _onnxruntime() -> dict[str, Any] | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}


def _openvino() -> dict[str, Any] | None:
    try:
        import openvino
    except ImportError:
        return None
    try:
        devices = list(openvino.Core().available_devices)
    except Exception as exc:  # OpenVINO raises its own types when a plugin fails to start
        devices = [f"none ({exc})"]
    return {"version": openvino.__version__, "devices": devices}


def _tensorrt(flavour: str) -> str | None:
    try:
        return str(import_tensorrt(flavour).__version__)
    except ZsadError:
        return None


def _cupy() -> dict[str, Any] | None:
    try:
        import cupy
    except ImportError:
        return None
    try:
        devices = int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # a missing or broken driver: CuPy is installed but sees no GPU
        devices = 0
    return {"version": str(getattr(cupy, "__version__", "unknown")), "devices": devices}


def _gpu() -> dict[str, Any]:
    try:
        return gpu_details(0)
    except ZsadError as exc:
        return {"error": str(exc)}


def machine() -> dict[str, Any]:
    """Everything this machine offers the runtimes; missing packages are None."""
    return {
        "cpu": cpu(),
        "onnxruntime": _onnxruntime(),
        "openvino": _openvino(),
        "tensorrt": {key: _tensorrt(key) for key in FLAVOURS},
        "gpu": _gpu(),
        "cupy": _cupy(),
    }


def auto_choice(offers: dict[str, Any]) -> dict[str, str]:
    """What `--bundle DIR --device auto` runs on, by the runtime's own chooser, and why."""
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        backend = choose_backend("auto", "auto", None)
    ort = offers["onnxruntime"]
    if backend == "openvino":
        return {"backend": "openvino", "file": FP32_ONNX, "why": said.getvalue().strip()}
    if ort is not None and CUDA in ort["providers"]:
        why = "ONNX Runtime has the CUDA provider: the FP16 file on the GPU"
        return {"backend": "onnxruntime-cuda", "file": FP16_ONNX, "why": why}
    why = "ONNX Runtime's CPU provider: OpenVINO is picked only on an Intel CPU with it installed"
    return {"backend": "onnxruntime-cpu", "file": FP32_ONNX, "why": why}


def _engine_problems(info: EngineInfo, offers: dict[str, Any]) -> list[str]:
    spec = FLAVOURS[info.flavour]
    have = offers["tensorrt"].get(info.flavour)
    problems = []
    if have is None:
        problems.append(
            f"{spec.label} {info.tensorrt_version} needed, not installed: "
            f"pip install 'zsad[{spec.extra}]'"
        )
    elif have != info.tensorrt_version:
        problems.append(
            f"engine built with {spec.label} {info.tensorrt_version}, this machine has {have} "
            "(rebuild with zsad build-engine, or install the matching version)"
        )
    gpu = offers["gpu"]
    if "error" in gpu:
        problems.append(f"the engine needs an NVIDIA GPU: {_short(gpu['error'])}")
    elif gpu["compute_capability"] not in info.compute_capabilities:
        problems.append(
            f"engine built for compute {', '.join(info.compute_capabilities)}, this GPU "
            f"({gpu['name']}) is {gpu['compute_capability']} (rebuild with zsad build-engine "
            f"--compute-capability {gpu['compute_capability']})"
        )
    return problems


def _short(error: str) -> str:
    """An error without its parenthesised detail: the driver's own words can fill three lines of
    a screen; --json keeps them whole."""
    return error.split(" (", 1)[0]


def _onnx_problems(choice: dict[str, str], offers: dict[str, Any]) -> list[str]:
    if choice["backend"].startswith("onnxruntime") and offers["onnxruntime"] is None:
        return ["ONNX Runtime not installed: pip install onnxruntime (CPU) or 'zsad[gpu]' (CUDA)"]
    return []


def bundle_needs(bundle: Bundle) -> dict[str, Any]:
    """What a loaded bundle asks of the machine: method, sizes, outputs, files and engine."""
    engine = bundle.engine
    flavour = FLAVOURS.get(engine.flavour) if engine is not None else None
    return {
        "path": str(bundle.root),
        "method": bundle.method,
        "backbone": bundle.backbone,
        "image_size": bundle.image_size,
        "outputs": list(bundle.outputs),
        "files": {name: entry["bytes"] for name, entry in bundle.meta["files"].items()},
        "engine": None
        if engine is None
        else {
            "file": engine.file,
            "flavour": flavour.label if flavour is not None else engine.flavour,
            "tensorrt_version": engine.tensorrt_version,
            "compute_capabilities": list(engine.compute_capabilities),
            "batch": [engine.min_batch, engine.max_batch],
        },
    }


def bank_memory(
    bundle: Bundle, bank: int, offers: dict[str, Any], choice: dict[str, str]
) -> dict[str, Any] | None:
    """Host and GPU bytes of a stream with a bank of ``bank`` at the bundle's size, the encoder
    and scoring where `--device auto` runs them, against this machine's RAM and GPU memory, and
    the largest bank that fits; None for a bundle without taps."""
    shapes = bundle.meta.get("output_shapes", {})
    if "taps" not in shapes:
        return None
    n_taps, tokens, channels = (int(d) for d in shapes["taps"][1:])
    shape = ScoringShape(
        n_taps, tokens, channels, n_taps * len(DEFAULT_R_LIST), int(shapes.get("cls", [0])[-1])
    )
    files = bundle.meta["files"]
    weights = files[choice["file"]]["bytes"] if choice["file"] in files else 0
    encoder = encoder_footprint(
        weights, channels, tokens, 1, choice["backend"] == "onnxruntime-cuda"
    )
    on_gpu = bool(offers["cupy"] and offers["cupy"]["devices"])
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    gpu = offers["gpu"].get("memory_mib", 0) * 2**20

    def fits(k: int) -> bool:
        need = total(encoder, bank_footprint(k, shape, on_gpu))
        return need.host <= ram and need.gpu <= gpu

    need = total(encoder, bank_footprint(bank, shape, on_gpu))
    largest = 0
    step = 1 << max(bank, 2).bit_length()
    while step:  # the largest K that fits, bit by bit: the need grows with K
        if largest + step <= bank and fits(largest + step):
            largest += step
        step >>= 1
    return {
        "bank": bank,
        "host_bytes": need.host,
        "gpu_bytes": need.gpu,
        "ram_bytes": ram,
        "gpu_memory_bytes": gpu,
        "fits": fits(bank),
        "largest_bank": largest,
    }


def _memory_problem(memory: dict[str, Any]) -> list[str]:
    if memory["fits"]:
        return []
    where = (
        f"{_gb(memory['host_bytes'])} of host memory, this machine has {_gb(memory['ram_bytes'])}"
        if memory["host_bytes"] > memory["ram_bytes"]
        else f"{_gb(memory['gpu_bytes'])} of GPU memory, the GPU has "
        f"{_gb(memory['gpu_memory_bytes'])}"
    )
    instead = (
        f"use --bank {memory['largest_bank']} or less"
        if memory["largest_bank"] >= 2
        else "no bank fits"
    )
    return [f"a bank of {memory['bank']} needs {where}: {instead}"]


def _gb(count: int) -> str:
    """Bytes as GB to a tenth, or as whole MB below 1 GB."""
    return f"{count / 2**30:.1f} GB" if count >= 2**30 else f"{count / 2**20:.0f} MB"


def diagnose(root: str | Path | None = None, bank: int = DEFAULT_BANK) -> dict[str, Any]:
    """The whole report: machine, bundle (with ``root``), the auto choice, mismatches and
    whether the bundle runs here (some encoder of it loads, and its files are intact); the
    bundle's needs include the memory of a stream with a bank of ``bank``."""
    offers = machine()
    choice = auto_choice(offers)
    report: dict[str, Any] = {"machine": offers, "auto": choice, "bundle": None}
    if root is None:
        report |= {"mismatches": [], "runs": True}
        return report
    try:
        bundle = Bundle.load(root)
    except ZsadError as exc:
        report |= {"mismatches": [str(exc)], "runs": False}
        return report
    report["bundle"] = bundle_needs(bundle)
    memory = bank_memory(bundle, bank, offers, choice)
    report["bundle"]["memory"] = memory
    broken = {}
    for name in bundle.meta["files"]:
        try:
            bundle.file(name)
        except ZsadError as exc:
            broken[name] = str(exc)
    paths: dict[str, list[str]] = {}
    if choice["file"] in bundle.meta["files"]:
        paths[choice["file"]] = _onnx_problems(choice, offers)
    if bundle.engine is not None and bundle.engine.flavour in FLAVOURS:
        paths[bundle.engine.file] = _engine_problems(bundle.engine, offers)
    for name, problems in paths.items():
        if name in broken:
            problems.append(broken.pop(name))
    mismatches = [p for problems in paths.values() for p in problems] + list(broken.values())
    if not paths:
        mismatches.append(f"no encoder here runs: neither {choice['file']} nor an engine")
    # A bank too large for this machine is worth a line, yet a smaller one runs.
    mismatches += _memory_problem(memory) if memory is not None else []
    runs = not broken and any(not problems for problems in paths.values())
    report |= {"mismatches": mismatches, "runs": runs}
    return report


def _machine_lines(offers: dict[str, Any]) -> list[str]:
    c = offers["cpu"]
    flags = ", ".join(c["flags"]) or "none of avx2/avx512/amx"
    ort, ov, cp, gpu = offers["onnxruntime"], offers["openvino"], offers["cupy"], offers["gpu"]
    cupy_line = f"{cp['version']}, {cp['devices']} device(s)" if cp else "not installed"
    trt = ", ".join(
        f"{FLAVOURS[k].label} {v or 'not installed'}" for k, v in offers["tensorrt"].items()
    )
    if "error" in gpu:
        gpu_line = f"none ({_short(gpu['error'])})"
    else:
        gpu_line = (
            f"{gpu['name']}, compute {gpu['compute_capability']}, {gpu['memory_mib']} MiB, "
            f"driver {gpu['driver']}"
        )
    return [
        f"  CPU          {c['model']} ({c['arch']}; {flags})",
        "  ONNX Runtime "
        + (f"{ort['version']}: {', '.join(ort['providers'])}" if ort else "not installed"),
        "  OpenVINO     "
        + (f"{ov['version']}: {', '.join(ov['devices'])}" if ov else "not installed"),
        f"  TensorRT     {trt}",
        f"  GPU          {gpu_line}",
        f"  CuPy         {cupy_line}",
    ]


def render(report: dict[str, Any]) -> str:
    """The report as one screen of text."""
    lines = ["This machine", *_machine_lines(report["machine"])]
    needs = report["bundle"]
    if needs is not None:
        lines += [
            f"Bundle {needs['path']}",
            f"  {needs['method']} on {needs['backbone']}, {needs['image_size']} px, "
            f"outputs {', '.join(needs['outputs'])}",
            "  files        " + ", ".join(f"{n} ({b:,} B)" for n, b in needs["files"].items()),
        ]
        memory = needs.get("memory")
        if memory is not None:
            used = f"{_gb(memory['host_bytes'])} of {_gb(memory['ram_bytes'])} RAM"
            if memory["gpu_bytes"]:
                used += f", {_gb(memory['gpu_bytes'])} of {_gb(memory['gpu_memory_bytes'])} GPU"
            lines.append(
                f"  memory       a bank of {memory['bank']} (--bank): {used}, "
                + ("fits" if memory["fits"] else "does not fit")
            )
        engine = needs["engine"]
        if engine is not None:
            lines.append(
                f"  engine       {engine['flavour']} {engine['tensorrt_version']}, compute "
                f"{', '.join(engine['compute_capabilities'])}, batch "
                f"{engine['batch'][0]}..{engine['batch'][1]}"
            )
    auto = report["auto"]
    lines.append(f"--device auto: {auto['backend']} ({auto['file']}): {auto['why']}")
    if needs is not None and needs["engine"] is not None:
        lines.append(f"--engine {needs['path']}/{needs['engine']['file']}: TensorRT on the GPU")
    lines += [f"mismatch: {m}" for m in report["mismatches"]]
    if needs is not None or report["mismatches"]:
        lines.append("runs here: " + ("yes" if report["runs"] else "no"))
    return "\n".join(lines)
