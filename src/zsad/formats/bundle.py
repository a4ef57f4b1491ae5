"""Deployment bundles: bundle.json plus the encoder files it lists, checked before use.

A bundle directory holds ``encoder.onnx`` (FP32), ``encoder.fp16.onnx``, optionally an engine
(``encoder.engine``) and, for HeadCLIP, ``calibration.safetensors``. ``bundle.json`` records what
the runtime needs (image size, normalisation, outputs, method), the engine's TensorRT flavour,
version and target GPUs, and a SHA-256 per file; a file is hashed again when it is opened, so a
truncated copy or a file from another export is an error instead of wrong numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zsad.errors import ZsadError
from zsad.formats.atomic import write_json
from zsad.formats.local_path import LocalPath

BUNDLE_JSON = "bundle.json"
FORMAT = "zsad-bundle/1"
FP32_ONNX = "encoder.onnx"
FP16_ONNX = "encoder.fp16.onnx"
ENGINE_FILE = "encoder.engine"
ENGINE_SUFFIXES = (".engine", ".plan")


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineInfo:
    """How the bundle's engine was built; the runtime refuses an engine that cannot load here."""

    file: str
    flavour: str  # "rtx" (tensorrt_rtx) or "trt" (tensorrt)
    tensorrt_version: str
    compute_capabilities: tuple[str, ...]  # e.g. ("7.5", "8.6")
    min_batch: int
    opt_batch: int
    max_batch: int


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle.json; ``file(name)`` verifies and returns the path of a listed file."""

    root: Path
    method: str
    backbone: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    outputs: tuple[str, ...]
    engine: EngineInfo | None
    calibration: str | None
    meta: dict[str, Any]

    @classmethod
    def load(cls, root: str | os.PathLike[str]) -> Bundle:
        """Read ROOT/bundle.json and check that every listed file is present with its size."""
        root = Path(root)
        path = root / BUNDLE_JSON
        if not path.is_file():
            raise ZsadError(f"--bundle {root}: no {BUNDLE_JSON} (not a zsad export bundle)")
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ZsadError(f"{path}: unreadable bundle.json ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise ZsadError(f"{path}: format {found!r}, expected {FORMAT!r}")
        bundle = cls.from_meta(root, meta, str(path))
        for name, entry in meta["files"].items():
            target = root / name
            if not target.is_file():
                raise ZsadError(f"--bundle {root}: {name} is missing")
            if target.stat().st_size != entry["bytes"]:
                raise ZsadError(
                    f"{target}: {target.stat().st_size} bytes, bundle.json lists {entry['bytes']} "
                    "(truncated or replaced file)"
                )
        return bundle

    @classmethod
    def from_meta(cls, root: Path, meta: dict[str, Any], where: str) -> Bundle:
        """A Bundle from bundle.json content (read from ``where``); no file is checked."""
        try:
            return cls._from_meta(root, meta)
        except (KeyError, TypeError, ValueError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
            raise ZsadError(f"{where}: malformed bundle.json ({problem})") from exc

    @classmethod
    def _from_meta(cls, root: Path, meta: dict[str, Any]) -> Bundle:
        engine = meta.get("engine")
        return cls(
            root=root,
            method=str(meta["method"]),
            backbone=str(meta["backbone"]),
            image_size=int(meta["image_size"]),
            mean=tuple(float(v) for v in meta["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in meta["std"]),  # type: ignore[arg-type]
            outputs=tuple(meta["outputs"]),
            engine=None
            if engine is None
            else EngineInfo(
                file=engine["file"],
                flavour=engine["flavour"],
                tensorrt_version=engine["tensorrt_version"],
                compute_capabilities=tuple(engine["compute_capabilities"]),
                min_batch=int(engine["batch"]["min"]),
                opt_batch=int(engine["batch"]["opt"]),
                max_batch=int(engine["batch"]["max"]),
            ),
            calibration=(meta.get("calibration") or {}).get("file"),
            meta=meta,
        )

    @property
    def local_path(self) -> LocalPath | None:
        """The HeadCLIP local path the encoder computes (None without a local output); bundles
        from before the variants computed the CSA sum, read after the last CSA block."""
        if "local" not in self.outputs:
            return None
        if "local_path" in self.meta:
            return LocalPath.from_meta(self.meta["local_path"])
        return LocalPath.legacy(tuple(self.meta["csa_layers"]))

    def file(self, name: str) -> Path:
        """Path of a listed file after checking its SHA-256 against bundle.json."""
        entry = self.meta["files"].get(name)
        if entry is None:
            raise ZsadError(f"--bundle {self.root}: {name} is not part of this bundle")
        path = self.root / name
        if sha256_file(path) != entry["sha256"]:
            raise ZsadError(
                f"{path}: SHA-256 differs from bundle.json (file altered, corrupt or from another "
                "export)"
            )
        return path


def write_meta(root: Path, meta: dict[str, Any]) -> None:
    """Write ROOT/bundle.json atomically (export and engine builds; the runtime only reads)."""
    write_json(root / BUNDLE_JSON, meta)
