"""Which machines run the `gpu` tests: any one of cuda-python's driver API, CuPy or torch seeing
a CUDA device is enough; a missing or broken one counts as seeing none."""

from __future__ import annotations

import sys
from types import ModuleType, SimpleNamespace

import pytest

from helpers import cuda_device_present
from stand_ins import CUresult, FakeDriver, install


def _raise(*args: object) -> None:
    raise RuntimeError('Function "cuInit" not found')  # cuda-python without libcuda.so


@pytest.fixture
def nothing(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No torch, no CuPy, no cuda-python (importing each raises ImportError)."""
    for name in ("torch", "cupy", "cuda", "cuda.bindings", "cuda.bindings.driver"):
        monkeypatch.setitem(sys.modules, name, None)
    return monkeypatch


def _torch(available: bool) -> ModuleType:
    torch = ModuleType("torch")
    torch.cuda = SimpleNamespace(is_available=lambda: available)
    return torch


def test_nothing_installed_means_no_gpu(nothing: pytest.MonkeyPatch) -> None:
    assert not cuda_device_present()


def test_cupy_with_a_device_is_enough_without_torch(
    nothing: pytest.MonkeyPatch, numpy_as_gpu: ModuleType
) -> None:
    nothing.setitem(sys.modules, "cupy", numpy_as_gpu)
    assert cuda_device_present()
    numpy_as_gpu.cuda.runtime.getDeviceCount = _raise  # CuPy without a driver
    assert not cuda_device_present()


def test_the_driver_api_with_a_device_is_enough_beside_a_cpu_only_torch(
    nothing: pytest.MonkeyPatch,
) -> None:
    nothing.setitem(sys.modules, "torch", _torch(False))
    driver = FakeDriver(devices=1)
    install(nothing, driver)
    assert cuda_device_present()
    assert driver.count("cuInit") == 1 and driver.count("cuDeviceGetCount") == 1
    driver.devices = 0
    assert not cuda_device_present()


@pytest.mark.parametrize("broken", ["raises", "no device"])
def test_a_broken_driver_means_no_gpu(nothing: pytest.MonkeyPatch, broken: str) -> None:
    driver = FakeDriver()
    if broken == "raises":
        driver.cuInit = _raise
    else:
        driver.fail["cuInit"] = CUresult.CUDA_ERROR_NO_DEVICE
    install(nothing, driver)
    assert not cuda_device_present()
    nothing.setitem(sys.modules, "torch", _torch(True))  # a CUDA torch still counts
    assert cuda_device_present()
