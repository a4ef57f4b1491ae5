"""`zsad doctor` on this machine and, with the stand-ins for TensorRT and the CUDA driver, on a
GPU machine: the machine's facts, the chooser's pick, one line per mismatch and the exit code."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from stand_ins import FakeDriver, fake_tensorrt, install, install_gpu, write_engine_bundle
from zsad.cli.app import main
from zsad.runtime import choose
from zsad.runtime.doctor import cpu, diagnose


def _doctor(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple:
    """Run `zsad doctor ARGS` in this process (so the stand-ins are seen): (exit code, stdout)."""
    monkeypatch.setattr(sys, "argv", ["zsad", "doctor", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().out


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    return install_gpu(monkeypatch)


def test_vector_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "vendor_id\t: GenuineIntel\nmodel name\t: Intel Xeon\n"
        "flags\t\t: fpu sse avx2 avx512f avx512bw amx_tile amx_bf16\n"
    )
    found = cpu(str(info))
    assert found["model"] == "Intel Xeon" and found["vendor"] == "GenuineIntel"
    assert found["flags"] == ["avx2", "avx512f", "amx"]  # no avx512_bf16 in the list


def test_this_machine_flags_providers_and_the_choosers_pick() -> None:
    ort = pytest.importorskip("onnxruntime")
    report = diagnose()
    flags = set()
    with open("/proc/cpuinfo") as handle:
        flags = next((set(line.split(":")[1].split()) for line in handle if "flags" in line), set())
    expected = [f for f in ("avx2", "avx512f", "avx512_bf16") if f in flags]
    assert [f for f in report["machine"]["cpu"]["flags"] if f != "amx"] == expected
    assert report["machine"]["onnxruntime"]["providers"] == ort.get_available_providers()
    picked = choose.choose_backend("auto", "auto", None)
    assert report["auto"]["backend"].startswith(picked)
    assert report["runs"] and report["mismatches"] == [] and report["bundle"] is None


@pytest.mark.parametrize("beats", [True, False])
def test_the_pick_and_its_reason_come_from_the_runtimes_chooser(
    monkeypatch: pytest.MonkeyPatch, beats: bool
) -> None:
    monkeypatch.setattr(choose, "_openvino_beats_onnxruntime", lambda: beats)
    auto = diagnose()["auto"]
    if beats:
        assert auto["backend"] == "openvino" and "OpenVINO on the CPU" in auto["why"]
    else:
        assert auto["backend"].startswith("onnxruntime") and auto["file"].endswith(".onnx")


def test_json_is_one_object(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    code, out = _doctor(monkeypatch, capsys, "--json")
    report = json.loads(out)
    assert code == 0
    assert set(report) == {"machine", "auto", "bundle", "mismatches", "runs"}
    assert "CPUExecutionProvider" in report["machine"]["onnxruntime"]["providers"]


@pytest.mark.parametrize(
    ("bundle_options", "line"),
    [
        ({"capabilities": ("8.6",)}, None),
        ({"capabilities": ("9.0",)}, "engine built for compute 9.0, this GPU (Stand-in RTX 3090) "
                                     "is 8.6"),
        ({"version": "1.6.0"}, "engine built with TensorRT-RTX 1.6.0, this machine has 1.7.1"),
    ],
)  # fmt: skip
def test_an_engine_bundle_against_the_gpu(
    gpu: SimpleNamespace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    bundle_options: dict,
    line: str | None,
) -> None:
    write_engine_bundle(tmp_path, **bundle_options)
    code, out = _doctor(monkeypatch, capsys, str(tmp_path))
    assert "Stand-in RTX 3090, compute 8.6, 24576 MiB, driver CUDA 12.4" in out
    assert "TensorRT-RTX 1.7.1, TensorRT 10.3.0" in out
    mismatches = [m for m in out.splitlines() if m.startswith("mismatch: ")]
    assert len(mismatches) == (line is not None), out
    assert line is None or mismatches[0].startswith(f"mismatch: {line} (rebuild with zsad ")
    assert code == (0 if line is None else 1)
    assert out.splitlines()[-1] == f"runs here: {'yes' if line is None else 'no'}"


def test_a_missing_flavour_names_its_extra(
    gpu: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    write_engine_bundle(tmp_path, flavour="trt", version="10.3.0")
    report = diagnose(tmp_path)
    assert report["mismatches"] == [
        "TensorRT 10.3.0 needed, not installed: pip install 'zsad[trt]'"
    ]
    assert not report["runs"]


def test_an_engine_bundle_without_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    driver = FakeDriver(fail={"cuInit": 100})
    install(monkeypatch, driver, fake_tensorrt("tensorrt_rtx", "1.7.1", driver))
    write_engine_bundle(tmp_path)
    report = diagnose(tmp_path)
    assert len(report["mismatches"]) == 1 and not report["runs"]
    assert report["mismatches"][0].startswith("the engine needs an NVIDIA GPU: CUDA initialisation")


def test_the_tiny_bundle_runs_and_a_corrupt_copy_does_not(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out = _doctor(monkeypatch, capsys, str(bundle))
    assert code == 0, out
    assert "mismatch" not in out and out.splitlines()[-1] == "runs here: yes"
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    onnx = copy / "encoder.onnx"
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF  # same size: only the SHA-256 tells
    onnx.write_bytes(bytes(data))
    code, out = _doctor(monkeypatch, capsys, str(copy), "--json")
    report = json.loads(out)
    assert code == 1 and not report["runs"]
    assert report["bundle"]["method"] == "staps" and report["bundle"]["image_size"] == 56
    assert any("SHA-256 differs" in m for m in report["mismatches"]), report["mismatches"]


def test_an_engine_mismatch_is_listed_while_the_onnx_file_still_runs(
    gpu: SimpleNamespace, bundle: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "both"
    shutil.copytree(bundle, copy)
    engine = write_engine_bundle(tmp_path / "engine", capabilities=("9.0",))
    shutil.copy(engine, copy / engine.name)
    meta = json.loads((copy / "bundle.json").read_text())
    engine_meta = json.loads((engine.parent / "bundle.json").read_text())
    meta["engine"] = engine_meta["engine"]
    meta["files"] |= engine_meta["files"]
    (copy / "bundle.json").write_text(json.dumps(meta))
    report = diagnose(copy)
    assert report["runs"], report["mismatches"]
    assert [m.split(" (rebuild")[0] for m in report["mismatches"]] == [
        "engine built for compute 9.0, this GPU (Stand-in RTX 3090) is 8.6"
    ]


def test_the_memory_of_a_bank_is_a_line_and_too_large_a_bank_a_mismatch(
    bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    code, out = _doctor(monkeypatch, capsys, str(bundle), "--bank", "16")
    memory = next(line for line in out.splitlines() if line.startswith("  memory"))
    assert "a bank of 16 (--bank): " in memory and memory.endswith(" RAM, fits"), out
    assert code == 0
    report = diagnose(bundle, bank=16)["bundle"]["memory"]
    assert report["fits"] and report["largest_bank"] == 16 and report["gpu_bytes"] == 0
    # On a machine with 1/1000 of this RAM: the bank still runs smaller, named in the line.
    ram = report["ram_bytes"] // 1000
    monkeypatch.setattr("os.sysconf", lambda name: ram if name == "SC_PHYS_PAGES" else 1)
    small = diagnose(bundle, bank=100_000)
    memory = small["bundle"]["memory"]
    assert not memory["fits"] and 2 <= memory["largest_bank"] < 100_000
    (line,) = small["mismatches"]
    assert line.startswith("a bank of 100000 needs ") and "of host memory, this machine has" in line
    assert line.endswith(f": use --bank {memory['largest_bank']} or less")
    assert small["runs"]
