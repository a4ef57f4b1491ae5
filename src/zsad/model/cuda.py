"""What PyTorch sees of the GPU, for the device checks and the benches: whether there is one,
its name, the memory in use, handing back torch's cache, and a measured GEMM peak."""

from __future__ import annotations

import gc

import torch


def cuda_available() -> bool:
    """Whether PyTorch sees a CUDA device."""
    return bool(torch.cuda.is_available())


def device_name(index: int = 0) -> str | None:
    """The name of CUDA device ``index``, or None when PyTorch sees no CUDA device."""
    return torch.cuda.get_device_name(index) if torch.cuda.is_available() else None


def memory_in_use_mb(device: str) -> float:
    """Memory in use on the GPU (total less free), whoever allocated it."""
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return (total - free) / 2**20


def release_cache() -> None:
    """Hand torch's cached GPU blocks back, so memory read next is what is really held."""
    gc.collect()
    torch.cuda.empty_cache()


def matmul_peak_tflops(device: str, dtype: str, size: int, calls: int) -> float:
    """Measured square-GEMM throughput (TFLOP/s) of ``size`` x ``size`` matrices on a CUDA
    device, timed by CUDA events after three warm-up products."""
    flops = 2.0 * size**3
    dt = {"float32": torch.float32, "float16": torch.float16}[dtype]
    a = torch.randn(size, size, device=device, dtype=dt)
    b = torch.randn(size, size, device=device, dtype=dt)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return round(flops * calls / (start.elapsed_time(end) / 1e3) / 1e12, 2)
