"""The journal feed the line sinks read from: complete lines only, ids, seeking."""

from __future__ import annotations

import json
from pathlib import Path

from zsad.station.journal import Journal
from zsad.station.line.feed import JournalFeed


def _journal(path: Path, count: int) -> None:
    journal = Journal(path)
    for n in range(count):
        journal.append({"name": f"{n}.png", "score": float(n)})
    journal.close()


def test_records_carry_their_line_number_as_id_across_reopens(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    _journal(path, 3)
    _journal(path, 2)  # a restart appends after what is there
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert ids == [0, 1, 2, 3, 4]


def test_a_partial_last_line_is_not_handed_out_until_complete(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    _journal(path, 2)
    with path.open("ab") as handle:
        handle.write(b'{"id":2,"name":"2.pn')
    feed = JournalFeed(path)
    assert [r["id"] for r in feed.read()] == [0, 1]
    assert feed.read() == []
    with path.open("ab") as handle:
        handle.write(b'g"}\n')
    assert [r["name"] for r in feed.read()] == ["2.png"]
    assert feed.position == 3


def test_seek_forward_back_and_past_the_end(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    _journal(path, 10)
    for keep in (False, True):
        feed = JournalFeed(path, start=4, keep_offsets=keep)
        assert [r["id"] for r in feed.read(3)] == [4, 5, 6]
        feed.seek(1)
        assert [r["id"] for r in feed.read(2)] == [1, 2]
        feed.seek(25)
        assert feed.read() == [] and feed.position == 10
        _journal(path, 1)
        assert [r["id"] for r in feed.read()] == [10]
        path.write_text("".join(path.read_text().splitlines(True)[:10]))  # back to 10 lines
        feed.close()


def test_a_feed_on_a_journal_not_yet_written_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    feed = JournalFeed(path, start=0)
    assert feed.read() == []
    _journal(path, 1)
    assert [r["id"] for r in feed.read()] == [0]


def test_a_corrupt_line_stops_the_feed_before_it_with_its_number(tmp_path: Path) -> None:
    import pytest

    from zsad.errors import ZsadError

    path = tmp_path / "results.jsonl"
    _journal(path, 2)
    with path.open("ab") as handle:
        handle.write(b"not json\n")
    _journal(path, 1)
    feed = JournalFeed(path)
    with pytest.raises(ZsadError, match="record 2 is not JSON"):
        feed.read()
    assert feed.position == 2
    with pytest.raises(ZsadError, match="record 2 is not JSON"):
        feed.read()
