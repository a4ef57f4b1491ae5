"""Dataset readers: MVTec-AD-style trees, plain folders / globs / list files, labelled CSVs.

Readers only list files; they never decode images, so they are cheap on large datasets.
Every user-input problem raises :class:`~zsad.errors.ZsadError` with a one-line message.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zsad.data.images import StrPath, is_image_file
from zsad.errors import ZsadError

GOOD = "good"
SPLITS: tuple[str, ...] = ("test", "train")
LIST_FILE_EXTENSIONS: tuple[str, ...] = (".txt", ".lst")
FILENAME_COLUMNS: tuple[str, ...] = ("path", "filename", "image")
LABEL_WORDS: dict[str, int] = {
    "0": 0,
    "good": 0,
    "ok": 0,
    "normal": 0,
    "1": 1,
    "anomalous": 1,
    "anomaly": 1,
    "ng": 1,
    "defect": 1,
    "defective": 1,
    "bad": 1,
}

# MVTec AD names masks <stem>_mask.png; BTAD-style trees reuse the image stem.
_MASK_SUFFIXES: tuple[str, ...] = ("_mask.png", ".png")
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Sample:
    """One image: label 0 good / 1 anomalous / None unknown, plus optional mask and names."""

    path: Path
    label: int | None = None
    mask_path: Path | None = None
    category: str | None = None
    defect: str | None = None


def list_categories(root: StrPath, split: str = "test") -> list[str]:
    """Return the sorted names of the subfolders of ``root`` that contain a ``split`` folder."""
    root_dir = _existing_dir(root, "dataset root")
    return sorted(
        entry.name
        for entry in root_dir.iterdir()
        if not entry.name.startswith(".") and (entry / split).is_dir()
    )


def read_mvtec(
    root: StrPath, categories: Sequence[str] | None = None, split: str = "test"
) -> list[Sample]:
    """List an MVTec-AD-style tree: categories sorted, 'good' first, then defects, then files."""
    if split not in SPLITS:
        raise ZsadError(f"split: unknown value {split!r} (expected one of {', '.join(SPLITS)})")
    root_dir = Path(root)
    available = list_categories(root_dir, split)
    if not available:
        raise ZsadError(f"{root_dir}: no MVTec-style categories (<category>/{split}/) found")
    if isinstance(categories, str):
        categories = [categories]
    chosen = available if categories is None else sorted(set(categories))
    samples: list[Sample] = []
    for category in chosen:
        if category not in available:
            raise ZsadError(
                f"{root_dir}: unknown category {category!r} (available: {', '.join(available)})"
            )
        samples.extend(_read_category(root_dir / category, category, split))
    return samples


def read_folder(
    path_or_paths: StrPath | Sequence[StrPath], recursive: bool = False
) -> list[Sample]:
    """List unlabelled images from folders, globs, image files or .txt/.lst list files."""
    inputs = (
        [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) else list(path_or_paths)
    )
    if not inputs:
        raise ZsadError("input: no image paths given")
    found: set[Path] = set()
    for item in inputs:
        found.update(_absolute(p) for p in _expand_input(item, recursive))
    return [Sample(path=path) for path in sorted(found)]


def read_labelled_folder(folder: StrPath, csv_path: StrPath) -> list[Sample]:
    """List the images named in a CSV (filename column + label column) under ``folder``."""
    folder_dir = _existing_dir(folder, "image folder")
    csv_file = Path(csv_path)
    if not csv_file.is_file():
        raise ZsadError(f"{csv_file}: label CSV not found")
    first_line: dict[Path, int] = {}
    samples: list[Sample] = []
    for line, name, label_text in _read_label_rows(csv_file):
        image = folder_dir / name
        if not image.is_file():
            raise ZsadError(f"{csv_file}:{line}: image {name!r} not found in {folder_dir}")
        key = _absolute(image)
        if key in first_line:
            raise ZsadError(
                f"{csv_file}:{line}: {name!r} is listed twice (first on line {first_line[key]})"
            )
        first_line[key] = line
        samples.append(Sample(path=image, label=_parse_label(label_text, csv_file, line)))
    if not samples:
        raise ZsadError(f"{csv_file}: no rows")
    return sorted(samples, key=lambda sample: sample.path)


def _read_category(category_dir: Path, category: str, split: str) -> list[Sample]:
    """List one category's split; defect images get the mask next to them in ground_truth/."""
    split_dir = category_dir / split
    kinds = [GOOD] if split == "train" else _defect_kinds(split_dir)
    samples: list[Sample] = []
    for kind in kinds:
        if not (split_dir / kind).is_dir():
            continue
        for image in _images_in(split_dir / kind, recursive=False):
            if kind == GOOD:
                samples.append(Sample(path=image, label=0, category=category))
            else:
                mask = _find_mask(category_dir / "ground_truth" / kind, image.stem)
                samples.append(
                    Sample(path=image, label=1, mask_path=mask, category=category, defect=kind)
                )
    if not samples:
        raise ZsadError(f"{split_dir}: no images found")
    return samples


def _defect_kinds(split_dir: Path) -> list[str]:
    """Return the subfolder names of a test split, 'good' first and the rest sorted."""
    names = sorted(
        entry.name
        for entry in split_dir.iterdir()
        if entry.is_dir() and not entry.name.startswith(".")
    )
    return sorted(names, key=lambda name: name != GOOD)


def _find_mask(mask_dir: Path, stem: str) -> Path | None:
    """Return the ground-truth mask file for an image stem, or None when there is none."""
    for suffix in _MASK_SUFFIXES:
        candidate = mask_dir / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _expand_input(item: StrPath, recursive: bool) -> list[Path]:
    """Resolve one input (folder, image file, list file or glob) to image paths."""
    path = Path(item)
    if path.is_dir():
        images = _images_in(path, recursive)
    elif path.is_file() and path.suffix.lower() in LIST_FILE_EXTENSIONS:
        images = _read_list_file(path)
    elif path.is_file():
        if not is_image_file(path):
            raise ZsadError(f"{path}: not an image, folder, or .txt/.lst list file")
        images = [path]
    elif _GLOB_CHARS & set(str(item)):
        images = sorted(
            Path(match)
            for match in glob.glob(str(item), recursive=True)
            if is_image_file(match) and os.path.isfile(match)
        )
    else:
        raise ZsadError(f"{path}: no such file or directory")
    if not images:
        raise ZsadError(f"{item}: no images found")
    return images


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    """Return the image files directly in (or, if recursive, below) a folder, sorted."""
    candidates: Iterable[Path] = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in candidates
        if is_image_file(path) and not path.name.startswith(".") and path.is_file()
    )


def _read_list_file(list_file: Path) -> list[Path]:
    """Read one path per line; relative paths are relative to the list file's folder."""
    paths: list[Path] = []
    for number, raw in enumerate(list_file.read_text(encoding="utf-8-sig").splitlines(), 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = list_file.parent / path
        if not path.is_file():
            raise ZsadError(f"{list_file}:{number}: {entry!r} is not a file")
        paths.append(path)
    return paths


def _read_label_rows(csv_file: Path) -> list[tuple[int, str, str]]:
    """Return (line number, file name, label text) for each data row of a label CSV."""
    with csv_file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [column.strip().lower() for column in next(reader, [])]
        name_index, label_index = _label_columns(header, csv_file)
        rows: list[tuple[int, str, str]] = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(name_index, label_index):
                raise ZsadError(f"{csv_file}:{reader.line_num}: too few columns")
            name = row[name_index].strip()
            if not name:
                raise ZsadError(f"{csv_file}:{reader.line_num}: empty file name")
            rows.append((reader.line_num, name, row[label_index]))
    return rows


def _label_columns(header: list[str], csv_file: Path) -> tuple[int, int]:
    """Return the indices of the file-name and label columns of a CSV header."""
    name_column = next((name for name in FILENAME_COLUMNS if name in header), None)
    if name_column is None or "label" not in header:
        raise ZsadError(
            f"{csv_file}: header must have a file column ({', '.join(FILENAME_COLUMNS)}) "
            f"and a 'label' column; found: {', '.join(header) or 'nothing'}"
        )
    return header.index(name_column), header.index("label")


def _parse_label(text: str, csv_file: Path, line: int) -> int:
    """Map a label word or digit to 0 (good) or 1 (anomalous)."""
    label = LABEL_WORDS.get(text.strip().lower())
    if label is None:
        raise ZsadError(
            f"{csv_file}:{line}: unknown label {text!r} "
            "(use 0/1, good/ok/normal or anomalous/ng/defect/bad)"
        )
    return label


def _existing_dir(path: StrPath, what: str) -> Path:
    """Return ``path`` as a Path, raising ZsadError unless it is an existing folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise ZsadError(f"{folder}: {what} is not a folder")
    return folder


def _absolute(path: Path) -> Path:
    """Return an absolute, normalised path without resolving symlinks."""
    return Path(os.path.abspath(path))
