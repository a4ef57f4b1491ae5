"""aravis:// against Aravis's fake GigE Vision camera, inside a network namespace the test makes
(GigE Vision discovery broadcasts on every interface: never on the machine's own network). The
camera, the source and a station all run in tests/aravis_in_netns.py; this reads what it saw."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from camera_sim import aravis_missing, netns_command
from helpers import require_service, station_records

pytestmark = pytest.mark.slow

MISSING = aravis_missing()
require_service(MISSING is None, f"Aravis tests: {MISSING}")
SCRIPT = Path(__file__).with_name("aravis_in_netns.py")


@pytest.fixture(scope="module")
def seen(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What the script saw (JSON), with ``out``: where its station wrote."""
    import gi

    out = tmp_path_factory.mktemp("aravis") / "out"
    # The child imports gi from where this interpreter found it, and zsad from the tree under test.
    path = [os.environ["PYTHONPATH"], str(Path(gi.__file__).parents[1])]
    process = subprocess.Popen(
        [*netns_command(), sys.executable, str(SCRIPT), str(out), str(bundle)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=300)
    finally:
        # The fake camera is the script's child: nothing of the namespace outlives the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, stderr
    return {**json.loads(stdout.splitlines()[-1]), "out": out}


def test_a_software_trigger_gives_one_frame_per_trigger_with_its_part_id(seen) -> None:
    assert not seen["idle"] and not seen["extra"]  # nothing unasked, nothing doubled
    assert seen["parts"] == ["A-1", "A-2", "A-3"]
    assert seen["shapes"] == [[48, 64, 3]] * 3  # Width, Height and PixelFormat reached it
    assert min(seen["colours"]) > 0  # the camera's test pattern, not a blank buffer
    assert seen["latency_max_s"] < 2.0


def test_free_run_delivers_numbered_frames(seen) -> None:
    assert seen["free_numbers"] == [0, 1, 2, 3, 4]


def test_a_missing_camera_and_refused_settings_are_named_in_one_line(seen) -> None:
    assert seen["missing"] == (
        "aravis://no-such-camera: cannot open the camera (Device 'no-such-camera' not found; "
        "found ['Aravis-Fake-GV01'])"
    )
    prefix = "aravis://Aravis-Fake-GV01: camera setting"
    assert seen["unknown"] == f"{prefix} NoSuchFeature: the camera has no such feature"
    assert seen["enum"].startswith(f"{prefix} PixelFormat=YUV: refused (")
    assert seen["integer"].startswith(f"{prefix} Width=abc: refused (")
    for key in ("missing", "unknown", "enum", "integer"):
        assert "\n" not in seen[key]


def test_a_station_scores_one_frame_per_trigger_none_twice(seen) -> None:
    records = station_records(seen["out"])
    parts = [f"T-{number}" for number in range(6)]
    assert seen["triggers"] == 6 and seen["stopped_by"].startswith("idle")
    assert sorted(r["part_id"] for r in records) == parts  # each trigger once, none doubled
    assert all(r["index"] is not None and r["decision"] != "rejected" for r in records)
    assert len({r["frame"] for r in records}) == 6  # six frames kept, one per record


def test_a_camera_that_stops_answering_is_reported_to_the_reader(seen) -> None:
    assert seen["lost"] == "aravis://Aravis-Fake-GV01: the camera stopped answering (control lost)"
    assert seen["lost_after_s"] < 15
