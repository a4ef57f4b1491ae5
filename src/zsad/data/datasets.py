"""Dataset readers: MVTec-AD-style trees, plain folders / globs / list files, labelled CSVs.

Readers only list files; they never decode images, so they are cheap on large datasets.
Every user-input problem raises :class:`~zsad.errors.ZsadError` with a one-line message, except
in unlabelled inputs, where one bad input must not stop the others: a missing path is kept for
the scorer to report, an input with no image is a warning, and only finding nothing is an error.
"""

from __future__ import annotations

import csv
import glob
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zsad.data.images import StrPath, is_image_file
from zsad.errors import ZsadError

GOOD = "good"
SPLITS: tuple[str, ...] = ("test", "train")
LIST_FILE_EXTENSIONS: tuple[str, ...] = (".txt", ".lst")
# Tried in this order when no file column is named: the most specific name wins.
FILENAME_COLUMNS: tuple[str, ...] = ("path", "filename", "file", "image", "name", "id")
LABEL_COLUMN = "label"
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
_DIGITS = re.compile(r"(\d+)")
# An all-missing input list is reported in one line; a long list is cut after this many.
_MAX_LISTED = 5


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


def expand_inputs(
    path_or_paths: StrPath | Sequence[StrPath],
    recursive: bool = False,
    *,
    out: StrPath | None = None,
) -> tuple[list[Sample], list[str]]:
    """List images from folders, globs, files and list files in the order given, plus one
    warning line per input that yielded no image; folders and globs skip what lies in ``out``."""
    inputs = (
        [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) else list(path_or_paths)
    )
    if not inputs:
        raise ZsadError("input: no image paths given")
    results = None if out is None else Path(out)
    seen: set[Path] = set()
    samples: list[Sample] = []
    warnings: list[str] = []
    for item in inputs:
        if results is not None and Path(item).is_dir() and same_folder(Path(item), results):
            raise ZsadError(
                f"--out {out}: is the input folder {item} itself, so a later run would score "
                f"its own overlays; give another folder (a subfolder such as "
                f"{Path(item) / 'results'} is never listed as input)"
            )
        paths, warning = _expand_input(item, recursive, results)
        if warning is not None:
            warnings.append(warning)
        for path in paths:
            key = _absolute(path)
            if key not in seen:
                seen.add(key)
                samples.append(Sample(path=key))
    # Missing paths are kept for the scorer to report, but a run with no file at all is a mistake.
    if not any(sample.path.is_file() for sample in samples):
        raise ZsadError(_nothing_found(inputs, warnings, samples))
    return samples, warnings


def read_folder(
    path_or_paths: StrPath | Sequence[StrPath],
    recursive: bool = False,
    *,
    warn: Callable[[str], None] | None = None,
    out: StrPath | None = None,
) -> list[Sample]:
    """List unlabelled images from folders, globs, image files or .txt/.lst list files; with
    ``out`` (the results folder), refuse it as an input folder and skip the images inside it."""
    samples, warnings = expand_inputs(path_or_paths, recursive, out=out)
    for line in warnings:
        (warn or _warn_stderr)(line)
    return samples


def read_labelled_folder(
    folder: StrPath,
    csv_path: StrPath,
    *,
    file_column: str | None = None,
    label_column: str | None = None,
) -> list[Sample]:
    """List the images named in a label CSV (file column + label column), in row order."""
    folder_dir = _existing_dir(folder, "image folder")
    csv_file = Path(csv_path)
    if not csv_file.is_file():
        raise ZsadError(f"{csv_file}: label CSV not found")
    first_line: dict[Path, int] = {}
    stems: dict[Path, dict[str, list[Path]]] = {}
    samples: list[Sample] = []
    for line, name, label_text in _read_label_rows(csv_file, file_column, label_column):
        image = _find_labelled_image(folder_dir, name, stems, f"{csv_file}:{line}")
        key = _absolute(image)
        if key in first_line:
            raise ZsadError(
                f"{csv_file}:{line}: {name!r} is listed twice (first on line {first_line[key]})"
            )
        first_line[key] = line
        samples.append(Sample(path=image, label=_parse_label(label_text, csv_file, line)))
    if not samples:
        raise ZsadError(f"{csv_file}: no rows")
    return samples


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


def _expand_input(
    item: StrPath, recursive: bool, out: Path | None
) -> tuple[list[Path], str | None]:
    """Resolve one input (folder, image file, list file or glob) to image paths, or say why
    it yields none. Folders and globs skip the images inside ``out``; files named one by one
    are taken as given."""
    path = Path(item)
    if path.is_dir():
        try:
            # Broken links are kept so that the scorer reports them instead of losing them.
            images = _images_in(path, recursive, dangling=True)
        except OSError as exc:
            return [], f"{item}: cannot list folder ({exc.strerror or exc})"
        if not images:
            return [], f"{item}: no images found{_subfolder_hint(path, recursive)}"
        return _outside(images, item, out)
    if path.is_file() and path.suffix.lower() in LIST_FILE_EXTENSIONS:
        try:
            listed = _read_list_file(path)
        except (OSError, UnicodeDecodeError) as exc:
            return [], f"{item}: cannot read list file ({exc})"
        return listed, None if listed else f"{item}: no paths listed"
    if path.is_file():
        if not is_image_file(path):
            return [], f"{item}: not an image, folder, or .txt/.lst list file"
        return [path], None
    if _GLOB_CHARS & set(str(item)):
        matches = [
            Path(match)
            for match in glob.glob(str(item), recursive=True)
            if is_image_file(match) and not os.path.isdir(match)
        ]
        if not matches:
            return [], f"{item}: no images found"
        return _outside(sorted(matches, key=_natural_key), item, out)
    # Missing, a dangling link or a link loop: the scorer reports it like any unreadable image.
    return [path], None


def _outside(paths: list[Path], item: StrPath, out: Path | None) -> tuple[list[Path], str | None]:
    """The ``paths`` that do not lie in ``out`` (where they are, not where a link points), or
    the warning that ``item`` had images only there."""
    if out is None:
        return paths, None
    root = os.path.join(os.path.realpath(out), "")
    inside: dict[Path, bool] = {}
    kept = []
    for path in paths:
        # One realpath per folder, not per file: a dataset folder holds thousands of images.
        if path.parent not in inside:
            inside[path.parent] = os.path.join(os.path.realpath(path.parent), "").startswith(root)
        if not inside[path.parent]:
            kept.append(path)
    if not kept:
        return [], f"{item}: its images are all inside --out {out}, which is never listed as input"
    return kept, None


def same_folder(a: Path, b: Path) -> bool:
    """True when two paths name the same folder (relative, through symlinks, or not yet made)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False  # one of them does not exist (yet)


def _subfolder_hint(folder: Path, recursive: bool) -> str:
    """The note for an image-less folder that has subfolders a recursive listing would search."""
    if recursive:
        return ""
    try:
        nested = any(
            entry.is_dir() and not entry.name.startswith(".") for entry in folder.iterdir()
        )
    except OSError:
        return ""
    return " (not searched recursively; use --recursive)" if nested else ""


def _nothing_found(inputs: list[StrPath], warnings: list[str], samples: list[Sample]) -> str:
    """One line for the inputs that, together, held no file at all."""
    problems = [
        *warnings,
        *(
            f"{sample.path}: {'is a directory' if sample.path.is_dir() else 'no such file'}"
            for sample in samples
        ),
    ]
    if len(inputs) == 1 and len(problems) == 1:
        return problems[0]
    if len(problems) > _MAX_LISTED:
        problems = [*problems[:_MAX_LISTED], f"and {len(problems) - _MAX_LISTED} more"]
    return (
        "no images found in " + ", ".join(str(item) for item in inputs) + ": " + "; ".join(problems)
    )


def _images_in(folder: Path, recursive: bool, dangling: bool = False) -> list[Path]:
    """Return the image files directly in (or, if recursive, below) a folder, in name order;
    with ``dangling``, also image-named entries that are not files (broken links, loops)."""
    candidates: Iterable[Path] = folder.rglob("*") if recursive else folder.iterdir()
    keep = (lambda path: not path.is_dir()) if dangling else (lambda path: path.is_file())
    images = [
        path
        for path in candidates
        if is_image_file(path) and not path.name.startswith(".") and keep(path)
    ]
    return sorted(images, key=lambda path: _natural_key(path.relative_to(folder)))


def _natural_key(path: Path) -> tuple[tuple[tuple[str | int, ...], str], ...]:
    """Sort key comparing names part by part with digit runs as numbers (2.png < 10.png)."""
    return tuple(_name_key(part) for part in path.parts)


def _name_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """Natural key of one name; the name itself breaks ties such as 01 vs 1."""
    chunks = _DIGITS.split(name)
    # re.split with a group alternates text (even) and digits (odd), so positions compare alike.
    return tuple(int(c) if i % 2 else c for i, c in enumerate(chunks)), name


def _read_list_file(list_file: Path) -> list[Path]:
    """Read one path per line, in file order; relative paths are relative to the list file's
    folder. Entries are not checked: missing ones are reported when scored."""
    paths: list[Path] = []
    for raw in list_file.read_text(encoding="utf-8-sig").splitlines():
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry).expanduser()
        if not path.is_absolute():
            path = list_file.parent / path
        paths.append(path)
    return paths


def _find_labelled_image(
    folder: Path, name: str, stems: dict[Path, dict[str, list[Path]]], where: str
) -> Path:
    """The image a CSV entry names: the file itself, or the one image with that stem when the
    entry has no image extension (ids such as 'case_001')."""
    image = folder / name
    if image.is_file():
        return image
    matches: list[Path] = []
    if not is_image_file(name):
        directory = image.parent
        if directory not in stems:
            stems[directory] = _images_by_stem(directory)
        matches = stems[directory].get(image.name, [])
    if not matches:
        raise ZsadError(f"{where}: image {name!r} not found in {folder}")
    if len(matches) > 1:
        names = ", ".join(match.name for match in matches)
        raise ZsadError(
            f"{where}: {name!r} matches {len(matches)} images ({names}); add the extension"
        )
    return matches[0]


def _images_by_stem(directory: Path) -> dict[str, list[Path]]:
    """Map each stem to the image files with that stem in one folder (read once per folder)."""
    by_stem: dict[str, list[Path]] = {}
    if not directory.is_dir():
        return by_stem
    for path in sorted(directory.iterdir(), key=lambda p: _name_key(p.name)):
        if is_image_file(path) and path.is_file():
            by_stem.setdefault(path.stem, []).append(path)
    return by_stem


def _read_label_rows(
    csv_file: Path, file_column: str | None, label_column: str | None
) -> list[tuple[int, str, str]]:
    """Return (line number, file name, label text) for each data row of a label CSV."""
    with csv_file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [column.strip().lower() for column in next(reader, [])]
        name_index, label_index = _label_columns(header, csv_file, file_column, label_column)
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


def _label_columns(
    header: list[str], csv_file: Path, file_column: str | None, label_column: str | None
) -> tuple[int, int]:
    """Return the indices of the file-name and label columns of a (lower-cased) CSV header."""
    found = ", ".join(header) or "nothing"
    for chosen, what in ((file_column, "file"), (label_column, "label")):
        if chosen is not None and chosen.strip().lower() not in header:
            raise ZsadError(f"{csv_file}: no {what} column {chosen!r} in the header ({found})")
    if file_column is not None:
        name_column: str | None = file_column.strip().lower()
    else:
        name_column = next((name for name in FILENAME_COLUMNS if name in header), None)
    label_name = (label_column or LABEL_COLUMN).strip().lower()
    if name_column is None or label_name not in header:
        raise ZsadError(
            f"{csv_file}: header must have a file column ({', '.join(FILENAME_COLUMNS)}) "
            f"and a {LABEL_COLUMN!r} column, or name them with --file-column/--label-column; "
            f"found: {found}"
        )
    return header.index(name_column), header.index(label_name)


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


def _warn_stderr(line: str) -> None:
    print(f"zsad: warning: {line}", file=sys.stderr)


def _absolute(path: Path) -> Path:
    """Return an absolute, normalised path without resolving symlinks."""
    return Path(os.path.abspath(path))
