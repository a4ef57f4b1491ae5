"""`zsad infer --ray` scores the subsets on a Ray cluster: the same records as one process,
groups kept apart, a worker that dies mid-run loses and repeats nothing."""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import ENV, free_port, require_service
from zsad.api.detector import Detector
from zsad.data.groups import image_groups
from zsad.data.synthetic import make_dataset
from zsad.errors import ZsadError

require_service(
    importlib.util.find_spec("ray") is not None, "Ray is not installed (pip install -e '.[ray]')"
)

# The same run in every test: two lots of 12 images, subsets of about 5.
SUBSETS = ("--subset-size", "5", "--device", "cpu", "--no-progress")


@pytest.fixture(scope="module")
def lots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two lots (folders) of generated parts, and groups.csv putting every other image of both
    lots in group even or odd (so its groups differ from the folders)."""
    root = tmp_path_factory.mktemp("ray-data")
    make_dataset(root / "made", seed=9, categories=["wood", "bracket"], n_good=10, n_defect=2)
    rows = []
    for lot, category in (("lot-a", "wood"), ("lot-b", "bracket")):
        (root / lot).mkdir()
        for source in sorted((root / "made" / category / "test").glob("*/*.png")):
            target = root / lot / f"{source.parent.name}_{source.name}"
            shutil.copyfile(source, target)
            rows.append((f"{lot}/{target.name}", "even" if len(rows) % 2 == 0 else "odd"))
    shutil.rmtree(root / "made")
    with open(root / "groups.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "lot"), *rows])
    return root


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray instance with 2 CPUs for this module; its address."""
    from zsad.api.ray_infer import ray_session

    with ray_session("local", cpus=2) as ray:
        yield ray.get_runtime_context().gcs_address


def _infer_here(args: list[str], out: Path) -> None:
    """`zsad infer ARGS` in this process, without Ray."""
    from zsad.cli.app import app

    result = CliRunner().invoke(app, ["infer", *args, "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)


def _infer_on_ray(args: list[str], out: Path, address: str) -> subprocess.CompletedProcess[str]:
    """`zsad infer ARGS --ray ADDRESS` as a user runs it: a driver process of its own."""
    script = "import sys\nfrom zsad.cli.app import main\nsys.argv[0] = 'zsad'\nmain()\n"
    command = [sys.executable, "-c", script, "infer", *args, "--out", str(out), "--ray", address]
    # A driver joins with the instance's token (Ray's token authentication: RAY_AUTH_MODE and
    # the token under HOME) and, the instance being on 127.0.0.1, looks for it there.
    ray_env = {k: v for k, v in os.environ.items() if k.startswith("RAY_")}
    env = {**ENV, "HOME": os.environ["HOME"], **ray_env}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def _records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _assert_same_results(expected: Path, got: Path) -> None:
    """The same records (all but the time written), maps and overlays."""
    want, have = _records(expected), _records(got)
    assert [r["path"] for r in have] == [r["path"] for r in want]
    for a, b in zip(want, have, strict=True):
        assert {**a, "time": None} == {**b, "time": None}
        assert np.array_equal(np.load(expected / a["map"]), np.load(got / b["map"]))
        assert (got / b["overlay"]).read_bytes() == (expected / a["overlay"]).read_bytes()


def _assert_groups_kept_apart(out: Path, groups: list[str], paths: list[Path]) -> None:
    group_of = dict(zip(map(str, paths), groups, strict=True))
    by_subset: dict[int, set[str]] = {}
    for record in _records(out):
        by_subset.setdefault(record["subset"], set()).add(group_of[record["path"]])
    assert all(len(found) == 1 for found in by_subset.values()), by_subset
    assert len({g for found in by_subset.values() for g in found}) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["groups"]) == sorted(set(groups))


def _paths(lots: Path) -> list[Path]:
    return sorted(lots.glob("lot-*/*.png"))


@pytest.fixture(scope="module")
def folder_runs(
    lots: Path, bundle: Path, cluster: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """`zsad infer --group-by folder --parquet` here and on Ray: the two output folders."""
    root = tmp_path_factory.mktemp("folder-runs")
    args = [str(lots / "lot-a"), str(lots / "lot-b"), "--bundle", str(bundle), *SUBSETS]
    args += ["--group-by", "folder", "--parquet"]
    _infer_here(args, root / "here")
    result = _infer_on_ray(args, root / "ray", cluster)
    assert result.returncode == 0, result.stderr
    assert "on Ray: 2 workers" in result.stderr
    return root / "here", root / "ray"


@pytest.mark.slow
def test_the_local_instance_listens_on_loopback_only(cluster: str) -> None:
    assert cluster.startswith("127.0.0.1:"), cluster


@pytest.mark.slow
def test_ray_gives_the_local_results_with_groups_by_folder(
    folder_runs: tuple[Path, Path], lots: Path
) -> None:
    here, ray = folder_runs
    _assert_same_results(here, ray)
    paths = _paths(lots)
    _assert_groups_kept_apart(ray, image_groups(paths, "folder"), paths)


@pytest.mark.slow
def test_parquet_holds_the_rows_of_results_jsonl(folder_runs: tuple[Path, Path]) -> None:
    import pyarrow.parquet as pq

    for out in folder_runs:
        rows = pq.read_table(out / "results.parquet").to_pylist()
        assert rows == _records(out)


def _exits_once(bundle: Path, marker: Path) -> Detector:
    """A detector whose first subset scored, in any process, ends that process: a worker dying
    mid-run (the marker file makes it once, across processes and restarts)."""
    detector = Detector.from_bundle(bundle, device="cpu")
    score_subset = detector.score_subset

    def dies_first(*args: Any, **kw: Any) -> Any:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return score_subset(*args, **kw)
        os._exit(1)

    detector.score_subset = dies_first  # type: ignore[method-assign]
    return detector


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_and_repeats_nothing(
    lots: Path, bundle: Path, cluster: str, tmp_path: Path
) -> None:
    import ray.cloudpickle

    from zsad.api.infer import infer_to_folder
    from zsad.api.ray_infer import RayCluster, infer_on_ray
    from zsad.api.subsets import SubsetRequest

    # Workers cannot import this test module: its functions travel by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    paths = _paths(lots)
    groups = image_groups(paths, f"{lots / 'groups.csv'}:lot")
    kw: dict[str, Any] = {"subsets": SubsetRequest(size=5), "groups": groups, "echo": print}
    for out in ("here", "ray"):
        (tmp_path / out).mkdir()
    with Detector.from_bundle(bundle, device="cpu") as detector:
        infer_to_folder(detector, paths, tmp_path / "here", **kw)
    marker = tmp_path / "died"
    opener = functools.partial(_exits_once, bundle, marker)
    infer_on_ray(opener, paths, tmp_path / "ray", cluster=RayCluster(workers=2), **kw)
    assert marker.exists(), "no worker died"
    records = _records(tmp_path / "ray")
    assert sorted(r["path"] for r in records) == sorted(map(str, paths))
    assert [r["id"] for r in records] == list(range(len(paths)))
    _assert_same_results(tmp_path / "here", tmp_path / "ray")
    _assert_groups_kept_apart(tmp_path / "ray", groups, paths)


@pytest.mark.slow
def test_a_killed_driver_resumes_on_ray(
    lots: Path, bundle: Path, cluster: str, tmp_path: Path
) -> None:
    from zsad.api.infer import infer_to_folder
    from zsad.api.ray_infer import infer_on_ray
    from zsad.api.subsets import SubsetRequest

    paths = _paths(lots)
    kw: dict[str, Any] = {"subsets": SubsetRequest(size=5), "groups": image_groups(paths, "folder")}
    (tmp_path / "here").mkdir()
    with Detector.from_bundle(bundle, device="cpu") as detector:
        count = infer_to_folder(detector, paths, tmp_path / "here", echo=print, **kw)["subsets"]
    # The driver was killed while writing its second subset: the first is in the journal, whole.
    shutil.copytree(tmp_path / "here", tmp_path / "ray")
    written = _records(tmp_path / "here")
    first = [json.dumps(r) + "\n" for r in written if r["subset"] == 0]
    second = json.dumps(next(r for r in written if r["subset"] == 1))
    (tmp_path / "ray" / "results.jsonl").write_text("".join(first) + second[:40])
    said: list[str] = []
    opener = functools.partial(Detector.from_bundle, bundle, device="cpu")
    infer_on_ray(opener, paths, tmp_path / "ray", echo=said.append, **kw)
    assert any(f"1 of {count} subsets already scored" in line for line in said), said
    assert any(f"scoring {count - 1} subsets on Ray" in line for line in said), said
    _assert_same_results(tmp_path / "here", tmp_path / "ray")


def _fails_off_the_driver(bundle: Path, driver: int) -> Detector:
    """A detector that opens on the driver and nowhere else: a node without the bundle."""
    if os.getpid() != driver:
        raise ZsadError(f"{bundle}: no such bundle on this node")
    return Detector.from_bundle(bundle, device="cpu")


@pytest.mark.slow
def test_a_worker_error_reaches_the_driver_as_its_one_line(
    lots: Path, bundle: Path, cluster: str, tmp_path: Path
) -> None:
    import ray.cloudpickle

    from zsad.api.ray_infer import infer_on_ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    opener = functools.partial(_fails_off_the_driver, bundle, os.getpid())
    with pytest.raises(ZsadError) as raised:
        infer_on_ray(opener, _paths(lots), tmp_path, echo=print)
    assert str(raised.value) == f"{bundle}: no such bundle on this node"
    assert not (tmp_path / "results.jsonl").exists()


@pytest.mark.slow
def test_ray_gives_the_local_results_with_groups_from_a_csv_column(
    lots: Path, bundle: Path, cluster: str, tmp_path: Path
) -> None:
    args = [str(lots), "-r", "--bundle", str(bundle), *SUBSETS]
    args += ["--group-by", f"{lots / 'groups.csv'}:lot"]
    _infer_here(args, tmp_path / "here")
    result = _infer_on_ray(args, tmp_path / "ray", cluster)
    assert result.returncode == 0, result.stderr
    _assert_same_results(tmp_path / "here", tmp_path / "ray")
    paths = _paths(lots)
    groups = image_groups(paths, f"{lots}/groups.csv:lot")
    _assert_groups_kept_apart(tmp_path / "ray", groups, paths)


def _error(args: list[str]) -> str:
    """The one-line ZsadError `zsad infer ARGS` stops with."""
    from zsad.cli.app import app

    result = CliRunner().invoke(app, ["infer", *args])
    assert isinstance(result.exception, ZsadError), (result.output, result.exception)
    message = str(result.exception)
    assert len(message.splitlines()) == 1, message
    return message


def test_bad_groups_and_addresses_are_one_line_errors(
    lots: Path, bundle: Path, tmp_path: Path
) -> None:
    base = [str(lots / "lot-a"), "--bundle", str(bundle), "--out", str(tmp_path / "out")]
    csv_file = lots / "groups.csv"
    assert "no group column 'batch'" in _error([*base, "--group-by", f"{csv_file}:batch"])
    assert "CSV not found" in _error([*base, "--group-by", f"{lots}/nothing.csv:lot"])
    assert "CSV:COLUMN" in _error([*base, "--group-by", "product"])
    unnamed = tmp_path / "partial.csv"
    unnamed.write_text("path,lot\nlot-a/elsewhere.png,x\n")
    assert "no row names" in _error([*base, "--group-by", f"{unnamed}:lot"])
    port = free_port()
    message = _error([*base, "--ray", f"127.0.0.1:{port}"])
    assert f"127.0.0.1:{port}" in message and "nothing answers" in message
    assert "ray://HOST:PORT" in _error([*base, "--ray", "head-node"])
    no_bundle = [str(lots / "lot-a"), "--model", "zsad-tiny", "--out", str(tmp_path / "out")]
    assert "--bundle" in _error([*no_bundle, "--ray", "local"])
    assert "only with --ray" in _error([*base, "--ray-workers", "2"])


def test_zsad_imports_ray_only_for_a_ray_run() -> None:
    code = (
        "import sys, zsad, zsad.api.ray_infer, zsad.cli.app\n"
        "print([m for m in ('ray', 'pyarrow') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
