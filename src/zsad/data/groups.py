"""Which group (product, lot) each image of a run belongs to: its folder, or a CSV column.

A group is scored on its own: its images are split into subsets, and no subset mixes groups.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from zsad.data.datasets import FILENAME_COLUMNS
from zsad.errors import ZsadError

FOLDER = "folder"


def image_groups(images: Sequence[Path], group_by: str) -> list[str]:
    """Each image's group: ``folder`` (its folder) or ``CSV:COLUMN`` (the COLUMN of the CSV
    row naming the image by path, relative to the CSV's folder or absolute, or by file name)."""
    if group_by == FOLDER:
        return [str(Path(image).parent) for image in images]
    csv_name, _, column = group_by.rpartition(":")
    if not csv_name or not column.strip():
        raise ZsadError(f"--group-by {group_by}: give {FOLDER} or CSV:COLUMN (e.g. lots.csv:lot)")
    by_name = _read_groups(Path(csv_name), column.strip().lower())
    found = []
    for image in images:
        absolute = os.path.abspath(image)
        group = by_name.get(absolute, by_name.get(Path(image).name))
        if group is None:
            raise ZsadError(f"{csv_name}: no row names {image} (each image needs its group)")
        found.append(group)
    return found


def _read_groups(csv_file: Path, column: str) -> dict[str, str]:
    """The CSV's group of each image, keyed by the absolute path a row gives, or by the file
    name where a row gives only that."""
    if not csv_file.is_file():
        raise ZsadError(f"--group-by {csv_file}: CSV not found")
    with csv_file.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [cell.strip().lower() for cell in next(reader, [])]
        found = ", ".join(header) or "nothing"
        if column not in header:
            raise ZsadError(f"{csv_file}: no group column {column!r} in the header ({found})")
        name_column = next((name for name in FILENAME_COLUMNS if name in header), None)
        if name_column is None:
            raise ZsadError(
                f"{csv_file}: no file column ({', '.join(FILENAME_COLUMNS)}) in the header "
                f"({found})"
            )
        names, groups = header.index(name_column), header.index(column)
        by_name: dict[str, str] = {}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            where = f"{csv_file}:{reader.line_num}"
            if len(row) <= max(names, groups) or not row[names].strip() or not row[groups].strip():
                raise ZsadError(f"{where}: needs a file name and a group")
            name = row[names].strip()
            key = name if "/" not in name else os.path.abspath(csv_file.parent / name)
            if key in by_name:
                raise ZsadError(f"{where}: {name!r} is listed twice")
            by_name[key] = row[groups].strip()
    return by_name
