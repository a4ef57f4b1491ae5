"""Tests for zsad.data.datasets: MVTec trees, folders / globs / list files, labelled CSVs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zsad.data.datasets import (
    Sample,
    expand_inputs,
    list_categories,
    read_folder,
    read_labelled_folder,
    read_mvtec,
)
from zsad.data.images import ImageLoadError, load_image
from zsad.errors import ZsadError


def _touch(path: Path) -> Path:
    # Readers only list files, so placeholder bytes are enough.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def mvtec(tmp_path: Path) -> Path:
    root = tmp_path / "mvtec"
    for name in ("001.png", "000.png"):
        _touch(root / "screw" / "test" / "good" / name)
        _touch(root / "screw" / "test" / "thread" / name)
    _touch(root / "screw" / "test" / "bent" / "000.png")
    _touch(root / "screw" / "test" / "bent" / "notes.txt")
    _touch(root / "screw" / "ground_truth" / "thread" / "000_mask.png")
    _touch(root / "screw" / "ground_truth" / "bent" / "000_mask.png")
    _touch(root / "screw" / "train" / "good" / "000.png")
    _touch(root / "screw" / "train" / "good" / "001.png")
    _touch(root / "carpet" / "test" / "good" / "000.png")
    _touch(root / "carpet" / "test" / "color" / "000.png")
    _touch(root / "carpet" / "ground_truth" / "color" / "000_mask.png")
    _touch(root / "readme_folder" / "notes.txt")
    _touch(root / "license.txt")
    return root


def _names(samples: list[Sample], root: Path) -> list[str]:
    return [sample.path.relative_to(root).as_posix() for sample in samples]


def test_list_categories_needs_a_test_folder(mvtec: Path) -> None:
    assert list_categories(mvtec) == ["carpet", "screw"]


def test_read_mvtec_order_is_category_then_good_first_then_defect_then_file(mvtec: Path) -> None:
    samples = read_mvtec(mvtec)
    assert _names(samples, mvtec) == [
        "carpet/test/good/000.png",
        "carpet/test/color/000.png",
        "screw/test/good/000.png",
        "screw/test/good/001.png",
        "screw/test/bent/000.png",
        "screw/test/thread/000.png",
        "screw/test/thread/001.png",
    ]


def test_read_mvtec_labels_and_masks(mvtec: Path) -> None:
    by_name = {sample.path.relative_to(mvtec).as_posix(): sample for sample in read_mvtec(mvtec)}
    good = by_name["screw/test/good/000.png"]
    assert (good.label, good.mask_path, good.category, good.defect) == (0, None, "screw", None)
    thread = by_name["screw/test/thread/000.png"]
    assert thread.label == 1
    assert thread.defect == "thread"
    assert thread.mask_path == mvtec / "screw" / "ground_truth" / "thread" / "000_mask.png"
    unmasked = by_name["screw/test/thread/001.png"]
    assert (unmasked.label, unmasked.mask_path) == (1, None)


def test_read_mvtec_selected_categories_are_sorted_and_deduplicated(mvtec: Path) -> None:
    samples = read_mvtec(mvtec, categories=["screw", "carpet", "screw"])
    assert [s.category for s in samples] == ["carpet"] * 2 + ["screw"] * 5
    assert {s.category for s in read_mvtec(mvtec, categories="screw")} == {"screw"}


def test_read_mvtec_train_split(mvtec: Path) -> None:
    samples = read_mvtec(mvtec, categories=["screw"], split="train")
    assert _names(samples, mvtec) == ["screw/train/good/000.png", "screw/train/good/001.png"]
    assert all(s.label == 0 and s.mask_path is None for s in samples)


def test_read_mvtec_unknown_category_lists_available(mvtec: Path) -> None:
    with pytest.raises(ZsadError) as caught:
        read_mvtec(mvtec, categories=["bottle"])
    message = str(caught.value)
    assert "'bottle'" in message
    assert str(mvtec) in message
    assert "carpet, screw" in message


def test_read_mvtec_rejects_bad_root_and_split(tmp_path: Path) -> None:
    with pytest.raises(ZsadError, match="not a folder"):
        read_mvtec(tmp_path / "absent")
    with pytest.raises(ZsadError, match="no MVTec-style categories"):
        read_mvtec(tmp_path)
    with pytest.raises(ZsadError, match="split"):
        read_mvtec(tmp_path, split="val")


def test_read_mvtec_empty_category_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "test" / "good").mkdir(parents=True)
    with pytest.raises(ZsadError, match="no images found"):
        read_mvtec(tmp_path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for name in ("b.png", "a.JPG", "c.txt", ".hidden.png", "sub/d.png"):
        _touch(root / name)
    return root


def test_read_folder_is_sorted_flat_and_unlabelled(folder: Path) -> None:
    samples = read_folder(folder)
    assert [s.path.name for s in samples] == ["a.JPG", "b.png"]
    assert all(s.label is None and s.mask_path is None for s in samples)
    assert all(s.path.is_absolute() for s in samples)


def test_read_folder_recursive(folder: Path) -> None:
    assert [s.path.name for s in read_folder(folder, recursive=True)] == ["a.JPG", "b.png", "d.png"]


def test_read_folder_glob(folder: Path) -> None:
    assert [s.path.name for s in read_folder(str(folder / "*.png"))] == ["b.png"]
    recursive_glob = read_folder(str(folder / "**" / "*.png"))
    assert [s.path.name for s in recursive_glob] == ["b.png", "d.png"]


def test_read_folder_list_file(folder: Path, tmp_path: Path) -> None:
    list_file = tmp_path / "lists" / "files.txt"
    list_file.parent.mkdir()
    list_file.write_text(
        f"# chosen images\n\n../imgs/b.png\n  {folder / 'sub' / 'd.png'}  \n../imgs/b.png\n"
    )
    assert [s.path.name for s in read_folder(list_file)] == ["b.png", "d.png"]


def test_read_folder_list_file_with_only_missing_entries_is_an_error(tmp_path: Path) -> None:
    list_file = tmp_path / "files.lst"
    list_file.write_text("# header\nmissing.png\n")
    with pytest.raises(ZsadError, match=r"missing\.png: no such file"):
        read_folder(list_file)


def test_read_folder_merges_and_deduplicates_a_list_of_inputs(folder: Path) -> None:
    relative = os.path.relpath(folder / "b.png")
    samples = read_folder([folder, folder / "b.png", relative, str(folder / "sub" / "*.png")])
    assert [s.path.name for s in samples] == ["a.JPG", "b.png", "d.png"]


def test_read_folder_errors_name_the_input(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(ZsadError, match="no such file"):
        read_folder(tmp_path / "absent")
    with pytest.raises(ZsadError, match=r"\*\.bmp: no images found"):
        read_folder(str(folder / "*.bmp"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZsadError, match="empty: no images found"):
        read_folder(tmp_path / "empty")
    with pytest.raises(ZsadError, match=r"notes\.csv: not an image"):
        read_folder(_touch(tmp_path / "notes.csv"))
    with pytest.raises(ZsadError, match="no image paths"):
        read_folder([])


def _labelled(tmp_path: Path, csv_text: str) -> tuple[Path, Path]:
    images = tmp_path / "images"
    for name in ("a.png", "b.png", "c.png"):
        _touch(images / name)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(csv_text)
    return images, csv_path


def test_read_labelled_folder_parses_label_words(tmp_path: Path) -> None:
    images, csv_path = _labelled(tmp_path, "\ufeffFilename, Label\nc.png,NG\na.png,good\nb.png,1\n")
    samples = read_labelled_folder(images, csv_path)
    assert [(s.path.name, s.label) for s in samples] == [("c.png", 1), ("a.png", 0), ("b.png", 1)]


@pytest.mark.parametrize(
    ("word", "label"),
    [("0", 0), ("OK", 0), ("normal", 0), ("anomalous", 1), ("defect", 1), ("Bad", 1)],
)
def test_label_words(tmp_path: Path, word: str, label: int) -> None:
    images, csv_path = _labelled(tmp_path, f"image,label\na.png,{word}\n")
    assert read_labelled_folder(images, csv_path)[0].label == label


def test_read_labelled_folder_unknown_label_names_the_line(tmp_path: Path) -> None:
    images, csv_path = _labelled(tmp_path, "path,label\na.png,0\n\nb.png,maybe\n")
    with pytest.raises(ZsadError, match=r"labels\.csv:4: unknown label 'maybe'"):
        read_labelled_folder(images, csv_path)


def test_read_labelled_folder_missing_file_names_the_line(tmp_path: Path) -> None:
    images, csv_path = _labelled(tmp_path, "path,label\na.png,0\nz.png,1\n")
    with pytest.raises(ZsadError, match=r"labels\.csv:3: image 'z\.png' not found"):
        read_labelled_folder(images, csv_path)


def test_read_labelled_folder_rejects_bad_header_and_duplicates(tmp_path: Path) -> None:
    images, csv_path = _labelled(tmp_path, "name,class\na.png,0\n")
    with pytest.raises(ZsadError, match="header must have a file column"):
        read_labelled_folder(images, csv_path)
    csv_path.write_text("path,label\na.png,0\na.png,1\n")
    with pytest.raises(ZsadError, match=r"labels\.csv:3: 'a\.png' is listed twice"):
        read_labelled_folder(images, csv_path)
    csv_path.write_text("path,label\n")
    with pytest.raises(ZsadError, match="no rows"):
        read_labelled_folder(images, csv_path)


# ------------------------------------------------ one bad input does not stop the others


def test_missing_looping_and_unlisted_paths_are_kept_for_the_scorer(
    folder: Path, tmp_path: Path
) -> None:
    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    list_file = tmp_path / "files.txt"
    list_file.write_text("gone.png\nimgs/b.png\nimgs/sub\n")
    samples = read_folder([tmp_path / "absent.png", loop, list_file, folder / "a.JPG"])
    expected = ["absent.png", "loop.png", "gone.png", "b.png", "sub", "a.JPG"]
    assert [s.path.name for s in samples] == expected
    for sample in samples[:3]:
        with pytest.raises(ImageLoadError, match="no such file"):
            load_image(sample.path)
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(samples[4].path)
    (folder / "broken.png").symlink_to(tmp_path / "nowhere.png")
    assert [s.path.name for s in read_folder(folder)] == ["a.JPG", "b.png", "broken.png"]


def test_inputs_without_images_are_warnings_not_aborts(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    inputs = [str(folder / "*.bmp"), tmp_path / "empty", folder, tmp_path / "empty.txt"]
    samples, warnings = expand_inputs(inputs)
    assert [s.path.name for s in samples] == ["a.JPG", "b.png"]
    assert warnings == [
        f"{folder / '*.bmp'}: no images found",
        f"{tmp_path / 'empty'}: no images found",
        f"{tmp_path / 'empty.txt'}: no paths listed",
    ]
    seen: list[str] = []
    assert read_folder(inputs, warn=seen.append) == samples
    assert seen == warnings


def test_an_image_less_folder_with_subfolders_suggests_recursive(folder: Path) -> None:
    (folder / "b.png").unlink()
    (folder / "a.JPG").unlink()
    with pytest.raises(ZsadError) as caught:
        read_folder(folder)
    assert str(caught.value) == (
        f"{folder}: no images found (not searched recursively; use --recursive)"
    )
    assert [s.path.name for s in read_folder(folder, recursive=True)] == ["d.png"]


def test_nothing_found_in_several_inputs_is_one_line_naming_them(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZsadError) as caught:
        read_folder([tmp_path / "a.png", tmp_path / "empty", str(tmp_path / "*.jpg")])
    message = str(caught.value)
    assert "\n" not in message and message.startswith("no images found in ")
    for needle in ("a.png: no such file", "empty: no images found", "*.jpg: no images found"):
        assert needle in message


def test_read_folder_keeps_the_order_given(tmp_path: Path) -> None:
    names = ["10.png", "2.png", "1.png", "001b.png"]
    for name in names:
        _touch(tmp_path / "imgs" / name)
    images = tmp_path / "imgs"
    # Within a folder or a glob: name order, digit runs compared as numbers.
    natural = ["1.png", "001b.png", "2.png", "10.png"]
    assert [s.path.name for s in read_folder(images)] == natural
    assert [s.path.name for s in read_folder(str(images / "*.png"))] == natural
    # Arguments and list-file lines: as given; an exact duplicate keeps its first place.
    args = [images / "10.png", images / "2.png", images / "10.png", images]
    assert [s.path.name for s in read_folder(args)] == ["10.png", "2.png", "1.png", "001b.png"]
    list_file = tmp_path / "reversed.txt"
    list_file.write_text("\n".join(f"imgs/{name}" for name in reversed(natural)) + "\n")
    assert [s.path.name for s in read_folder(list_file)] == list(reversed(natural))


# ------------------------------------------------ label CSVs: id columns, stems, named columns


@pytest.mark.parametrize("column", ["id", "file", "filename", "image", "path", "name"])
def test_label_csv_file_column_names(tmp_path: Path, column: str) -> None:
    images, csv_path = _labelled(tmp_path, f"{column},label\nb.png,1\na.png,0\n")
    assert [(s.path.name, s.label) for s in read_labelled_folder(images, csv_path)] == [
        ("b.png", 1),
        ("a.png", 0),
    ]


def test_label_csv_ids_without_extension_match_the_image_stem(tmp_path: Path) -> None:
    images, csv_path = _labelled(tmp_path, "ID,Label,age\nc,ng,61\na,normal,40\n")
    _touch(images / "case.001.jpg")
    samples = read_labelled_folder(images, csv_path)
    assert [(s.path.name, s.label) for s in samples] == [("c.png", 1), ("a.png", 0)]
    csv_path.write_text("id,label\ncase.001,1\n")
    assert read_labelled_folder(images, csv_path)[0].path == images / "case.001.jpg"
    _touch(images / "a.jpg")
    csv_path.write_text("id,label\nb,0\na,1\n")
    with pytest.raises(ZsadError, match=r"labels\.csv:3: 'a' matches 2 images \(a\.jpg, a\.png\)"):
        read_labelled_folder(images, csv_path)
    csv_path.write_text("id,label\nzz,0\n")
    with pytest.raises(ZsadError, match=r"labels\.csv:2: image 'zz' not found"):
        read_labelled_folder(images, csv_path)


def test_label_csv_columns_chosen_by_name(tmp_path: Path) -> None:
    images, csv_path = _labelled(tmp_path, "Study,Diagnosis,label\na,bad,0\nb,ok,1\n")
    samples = read_labelled_folder(images, csv_path, file_column="study", label_column="Diagnosis")
    assert [(s.path.name, s.label) for s in samples] == [("a.png", 1), ("b.png", 0)]
    with pytest.raises(ZsadError, match=r"labels\.csv: no file column 'scan' in the header"):
        read_labelled_folder(images, csv_path, file_column="scan")
    with pytest.raises(ZsadError, match=r"no label column 'y' in the header \(study, "):
        read_labelled_folder(images, csv_path, file_column="study", label_column="y")


def test_the_results_folder_is_never_listed_as_input(tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    for name in ("a.png", "results/overlays/a.png", "results/old/b.png"):
        _touch(images / name)
    out = images / "results"
    os.symlink(out, tmp_path / "alias")  # the same folder under another name
    for given in (out, tmp_path / "alias"):
        assert [s.path.name for s in read_folder(images, recursive=True, out=given)] == ["a.png"]
        assert read_folder(str(images / "**" / "*.png"), out=given) == read_folder(images)
    samples, warnings = expand_inputs([images, out / "old"], out=out)
    assert [s.path.name for s in samples] == ["a.png"]
    assert warnings == [f"{out / 'old'}: its images are all inside --out {out}, which is never "
                        "listed as input"]  # fmt: skip
    # A file named on its own is taken as given.
    assert read_folder([out / "old" / "b.png"], out=out)[0].path.name == "b.png"
    with pytest.raises(ZsadError, match=f"--out {images}: is the input folder"):
        read_folder(images / "results" / "..", out=images)
