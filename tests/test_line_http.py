"""The HTTP API and the operator page: paging the journal, overlays only from inside OUT, the
token on state changes, server-sent events resumed by record id, refusals that are clear 4xx
JSON, a real `zsad watch --http` station that scores on through all of it, and a real browser."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import assert_each_once as _assert_each_once
from helpers import (
    free_port,
    http_call,
    one_line_error,
    popen_watch,
    require_service,
    stop_station,
    zsad,
)
from helpers import station_records as _records
from helpers import write_frame as _png
from zsad.station.journal import Journal
from zsad.station.line.config import HttpConfig
from zsad.station.line.http import HttpSink
from zsad.station.line.hub import LineContext, TriggerRefused

TOKEN = "s3cret-token"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _raw(port: int, request: bytes) -> bytes:
    """Send bytes as they are (no client library to tidy them) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(request)
        chunks = []
        while chunk := raw.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class _Events:
    """A server-sent event stream read line by line: (id, event, data) or ('', 'comment', text)."""

    def __init__(self, port: int, path: str = "/api/events", **headers: str) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.connection.request("GET", path, headers=headers)
        self.response = self.connection.getresponse()
        self.status = self.response.status

    def __iter__(self) -> Iterator[tuple[str, str, str]]:
        fields: dict[str, str] = {}
        for raw in self.response:
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                yield "", "comment", line[1:].strip()
            elif line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif "data" in fields:
                yield fields.get("id", ""), fields.get("event", "message"), fields["data"]
                fields = {}

    def results(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` result events (status events and keep-alives skipped)."""
        found = []
        for event_id, kind, data in self:
            if kind == "result":
                record = json.loads(data)
                assert event_id == str(record["id"])
                found.append(record)
                if len(found) == count:
                    return found
        raise AssertionError(f"the stream ended after {len(found)} of {count} results")

    def close(self) -> None:
        self.response.close()  # the response holds the socket open too
        self.connection.close()


# ---------------------------------------------------------------------- the sink in this process


class _Line:
    """A journal, the context a station hands its sinks, and an HttpSink serving both."""

    def __init__(self, out: Path, token_file: Path | None, **options: Any) -> None:
        self.out = out
        self.journal = Journal(out / "results.jsonl")
        self.lines: list[str] = []
        self.context = LineContext(out, echo=self.lines.append)
        self.port = free_port()
        hosts = options.pop("allow_hosts", ())
        self.sink = HttpSink(HttpConfig(f"127.0.0.1:{self.port}", token_file, hosts), **options)
        self.sink.start(self.context)
        self.context.publish_status({"state": "running", "threshold": 0.5})

    def append(self, **record: Any) -> None:
        self.journal.append(
            {"index": self.journal.count, "name": f"{self.journal.count}.png", "score": 0.1,
             "decision": "OK", "threshold": 0.5, "map": None, "overlay": None, **record}
        )  # fmt: skip
        self.context.journal_grew(self.journal.count)

    def close(self) -> None:
        self.sink.stop(2.0)
        self.journal.close()


@pytest.fixture
def line(tmp_path: Path) -> Iterator[Callable[..., _Line]]:
    made: list[_Line] = []

    def make(*, token: str | None = TOKEN, **options: Any) -> _Line:
        token_file = None
        if token is not None:
            token_file = tmp_path / "token"
            token_file.write_text(token + "\n")
            token_file.chmod(0o600)
        made.append(_Line(tmp_path / "out", token_file, **options))
        return made[-1]

    yield make
    for each in made:
        each.close()


@pytest.mark.slow
def test_results_are_paged_from_the_journal_and_bad_paging_is_a_400(line) -> None:
    served = line()
    for i in range(7):
        served.append(decision="NG" if i in (2, 5) else "OK", score=0.1 * i)
    served.append(index=None, decision="rejected", score=None, error="cannot decode")
    status, page = http_call(served.port, "GET", "/api/results?since=3&limit=2")
    assert status == 200 and [r["id"] for r in page["results"]] == [3, 4] and page["next"] == 5
    status, page = http_call(served.port, "GET", "/api/results?since=6")
    assert [r["decision"] for r in page["results"]] == ["OK", "rejected"]
    assert http_call(served.port, "GET", "/api/results/5")[1]["decision"] == "NG"
    # Past the end: an empty page, however far.
    for since in ("8", "123456789", str(10**18 - 1)):
        assert http_call(served.port, "GET", f"/api/results?since={since}")[1]["results"] == []
    for query in ("since=-1", "since=abc", "since=" + "9" * 5000, "limit=0", "limit=1001"):
        status, answer = http_call(served.port, "GET", f"/api/results?{query}")
        assert status == 400 and query.split("=")[0] in answer["error"], answer
    assert http_call(served.port, "GET", "/api/results/8")[0] == 404
    overview = http_call(served.port, "GET", "/api/status")[1]
    assert overview["records"] == 8 and overview["station"]["state"] == "running"
    assert overview["counts"] == {"parts": 7, "ok": 5, "ng": 2, "no_decision": 0, "rejected": 1}
    assert [r["id"] for r in overview["recent_ng"]] == [5, 2]
    assert overview["latest"]["id"] == 6 and overview["read_only"] is False


@pytest.mark.slow
def test_overlays_and_maps_come_only_from_inside_out(line, tmp_path: Path) -> None:
    served = line()
    (served.out / "overlays").mkdir()
    (served.out / "overlays" / "0.png").write_bytes(b"\x89PNG inside")
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"SECRET outside OUT")
    (served.out / "overlays" / "link.png").symlink_to(secret)
    served.append(overlay="overlays/0.png")
    served.append(overlay="../secret.png", map=str(secret))  # a journal edited by hand
    served.append(overlay="overlays/link.png")
    served.append(overlay=None)
    status, data = http_call(served.port, "GET", "/api/results/0/overlay.png")
    assert status == 200 and data == b"\x89PNG inside"
    for path in (
        "/api/results/1/overlay.png",
        "/api/results/1/map.npy",
        "/api/results/2/overlay.png",
        "/api/results/3/overlay.png",
        "/api/results/0/../../secret.png",
        "/api/results/0/%2e%2e%2f%2e%2e%2fsecret.png",
        "/api/results/..%2f..%2fsecret.png/overlay.png",
        "/static/../http.py",
        "/static/%2e%2e/http.py",
        "/../../secret.png",
    ):
        status, answer = http_call(served.port, "GET", path)
        assert status == 404 and "error" in answer, (path, answer)
    answer = _raw(served.port, b"GET /api/results/0/../../../secret.png HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404") and b"SECRET" not in answer


@pytest.mark.slow
def test_the_threshold_needs_the_token_and_a_well_formed_body(line, tmp_path: Path) -> None:
    served = line()
    port, good = served.port, json.dumps({"threshold": 0.75}).encode()
    for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        status, answer = http_call(port, "POST", "/api/threshold", good, **auth)
        assert status == 401 and "Bearer" in answer["error"]
    assert served.context.take_threshold_request() is None
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for body, needle in (
        (b"{not json", "not JSON"),
        (b"[0.5]", "JSON object"),
        (b'{"threshold": "high"}', "finite number"),
        (b'{"threshold": NaN}', "finite number"),
        (b'{"threshold": true}', "finite number"),
        (b'{"threshold": 0.5, "by": "me"}', "unknown field"),
        (b"\xff\xfe", "not JSON"),
    ):
        status, answer = http_call(port, "POST", "/api/threshold", body, **bearer)
        assert status == 400 and needle in answer["error"], (body, answer)
    status, answer = http_call(port, "POST", "/api/threshold", b"x" * 5000, **bearer)
    assert status == 413
    answer = _raw(
        port, f"POST /api/threshold HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 411")
    assert http_call(port, "POST", "/api/status", good, **bearer)[0] == 405
    assert served.context.take_threshold_request() is None
    status, answer = http_call(port, "POST", "/api/threshold", good, **bearer)
    assert status == 202 and answer["threshold"] == 0.75
    assert served.context.take_threshold_request() == (0.75, "http 127.0.0.1")
    status, _ = http_call(port, "POST", "/api/threshold", b'{"threshold": null}', **bearer)
    assert status == 202 and served.context.take_threshold_request() == (None, "http 127.0.0.1")


@pytest.mark.slow
def test_a_trigger_needs_the_token_and_reaches_the_camera_with_its_part_id(line) -> None:
    served = line()
    port, bearer = served.port, {"Authorization": f"Bearer {TOKEN}"}
    body = json.dumps({"part_id": "P-1042"}).encode()
    status, answer = http_call(port, "POST", "/api/trigger", body, **bearer)
    assert status == 409 and "hot folder" in answer["error"]  # no camera serves triggers yet
    asked: list[str | None] = []
    served.context.serve_triggers(asked.append)
    assert http_call(port, "POST", "/api/trigger", body)[0] == 401
    for bad, needle in (
        (b'{"part_id": "x", "by": "me"}', "unknown field"),
        (b'{"part": "x"}', "JSON object"),
        (b'{"part_id": 42}', "part id"),
        (b'{"part_id": ""}', "part id"),
        (json.dumps({"part_id": "x" * 65}).encode(), "part id"),
        (b'{"part_id": "a\\nb"}', "control characters"),
        (b"P-1", "not JSON"),
    ):
        status, answer = http_call(port, "POST", "/api/trigger", bad, **bearer)
        assert status == 400 and needle in answer["error"], (bad, answer)
    assert asked == []
    status, answer = http_call(port, "POST", "/api/trigger", body, **bearer)
    assert status == 202 and answer == {"part_id": "P-1042", "accepted": True}
    assert http_call(port, "POST", "/api/trigger", b'{"part_id": null}', **bearer)[0] == 202
    assert asked == ["P-1042", None]

    def unreachable(part_id: str | None) -> None:
        raise TriggerRefused("camera unreachable since 12:00", busy=True)

    served.context.serve_triggers(unreachable)
    status, answer = http_call(port, "POST", "/api/trigger", body, **bearer)
    assert status == 503 and "unreachable" in answer["error"]


@pytest.mark.slow
def test_without_a_token_the_api_is_read_only(line, monkeypatch) -> None:
    monkeypatch.delenv("ZSAD_HTTP_TOKEN", raising=False)
    served = line(token=None)
    status, answer = http_call(served.port, "POST", "/api/threshold", b'{"threshold": 1}',
                           Authorization=f"Bearer {TOKEN}")  # fmt: skip
    assert status == 403 and "read-only" in answer["error"]
    assert served.context.take_threshold_request() is None
    assert http_call(served.port, "GET", "/api/status")[1]["read_only"] is True


@pytest.mark.slow
def test_events_resume_after_the_last_event_id_and_keep_alive(line) -> None:
    served = line(keepalive_s=0.2)
    for _ in range(5):
        served.append()
    first = _Events(served.port, "/api/events?since=0")
    assert first.status == 200
    assert [r["id"] for r in first.results(3)] == [0, 1, 2]
    first.close()
    # The browser's reconnection: Last-Event-ID wins over the ?since= it first opened with.
    resumed = _Events(served.port, "/api/events?since=0", **{"Last-Event-ID": "2"})
    assert [r["id"] for r in resumed.results(2)] == [3, 4]
    # Idle now: keep-alive comments keep the connection open.
    assert next(kind for _, kind, _ in resumed if kind in ("comment", "result")) == "comment"
    served.append(decision="NG")
    live = resumed.results(1)[0]
    assert live["id"] == 5 and live["decision"] == "NG"
    # Each new status of the station follows as a status event (no id: resuming is by record).
    served.context.publish_status({"state": "stopped", "threshold": 0.5})
    event_id, _, data = next(e for e in resumed if e[1] == "status")
    assert event_id == "" and json.loads(data)["station"]["state"] == "stopped"
    # The first stream's client left: its next keep-alive finds out and ends it.
    deadline = time.monotonic() + 10
    while served.sink.describe()["streams"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.sink.describe()["streams"] == 1
    resumed.close()
    # Without an id or since: only what comes next; an id past the end (another journal's)
    # goes on from the end too.
    fresh = _Events(served.port)
    ahead = _Events(served.port, **{"Last-Event-ID": "5000"})
    served.append()
    assert [r["id"] for r in fresh.results(1)] == [6]
    assert [r["id"] for r in ahead.results(1)] == [6]
    fresh.close()
    ahead.close()
    for bad in ("-1", "abc", "1" * 40, "²"):
        status, answer = http_call(served.port, "GET", "/api/events", **{"Last-Event-ID": bad})
        assert status == 400 and "Last-Event-ID" in answer["error"]


@pytest.mark.slow
def test_malformed_requests_get_json_errors_and_the_server_serves_on(line) -> None:
    served = line()
    served.append()
    for request, code in (
        (b"GET /api/status HTTP/7.1\r\n\r\n", b"505"),
        (b"BREW /api/status HTTP/1.0\r\n\r\n", b"405"),
        (b"GET /api/status HTTP/1.0 trailing words\r\n\r\n", b"400"),
        (b"GET /api/status HTTP/1.0\r\nX: " + b"y" * 70000 + b"\r\n\r\n", b"431"),
        (b"GET /api/results?since=%ff%fe HTTP/1.0\r\n\r\n", b"400"),
    ):
        answer = _raw(served.port, request)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == code, answer[:200]
        assert "error" in json.loads(body), body
    assert http_call(served.port, "GET", "/api/nothing")[0] == 404
    assert http_call(served.port, "GET", "/api/status")[1]["records"] == 1


# ---------------------------------------------------------------------- a real station


def _watch(in_dir: Path, out: Path, bundle: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    args = [str(in_dir), "--out", str(out), "--bundle", str(bundle), "--bank", "4"]
    args += ["--poll-s", "0.05", "--status-every", "0.5", "--http", f"127.0.0.1:{port}", *extra]
    return popen_watch(*args)


def _until(check: Callable[[], Any], station: subprocess.Popen[str], what: str) -> Any:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert station.poll() is None, station.communicate()[1]
        try:
            found = check()
        except OSError:
            found = None  # not listening yet
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def _set_threshold(port: int, station: subprocess.Popen[str], value: float) -> None:
    """POST a new threshold with the token, then wait until the station reports it."""
    body = json.dumps({"threshold": value}).encode()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert http_call(port, "POST", "/api/threshold", body, **bearer)[0] == 202
    _until(
        lambda: http_call(port, "GET", "/api/status")[1]["station"]["threshold"] == value,
        station,
        f"the threshold {value}",
    )


def test_a_watching_station_serves_its_journal_live_and_takes_a_threshold(
    bundle: Path, tmp_path: Path
) -> None:
    in_dir, out, port = tmp_path / "in", tmp_path / "out", free_port()
    in_dir.mkdir()
    (tmp_path / "token").write_text(TOKEN)
    names = [f"part_{i:02d}.png" for i in range(9)]
    for i, name in enumerate(names[:6]):
        _png(in_dir / name, i, "stain" if i == 4 else None)
    station = _watch(in_dir, out, bundle, port, "--http-token-file", str(tmp_path / "token"))
    try:
        overview = _until(
            lambda: (o := http_call(port, "GET", "/api/status")[1])["records"] == 6 and o,
            station,
            "six records",
        )
        assert overview["counts"]["parts"] == 6 and overview["station"]["backend"]
        journal = _records(out)
        page = http_call(port, "GET", "/api/results?since=0&limit=10")[1]
        assert page["results"] == journal and page["next"] == 6
        status, png = http_call(port, "GET", f"/api/results/{journal[4]['id']}/overlay.png")
        assert status == 200 and png == (out / journal[4]["overlay"]).read_bytes()
        assert png.startswith(b"\x89PNG")
        stream = _Events(port, "/api/events?since=0", **{"Last-Event-ID": "3"})
        assert stream.results(2) == journal[4:6]
        # Abuse on the side: none of it reaches the station.
        assert http_call(port, "GET", "/api/results?since=99999999999999")[1]["results"] == []
        assert http_call(port, "GET", "/api/results/0/../../../../etc/passwd")[0] == 404
        assert _raw(port, b"\x16\x03\x01 TLS, not HTTP\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert http_call(port, "POST", "/api/threshold", b'{"threshold": 0}')[0] == 401
        # The operator's new threshold, from the next image on: every part scores above 0.
        _set_threshold(port, station, 0)
        for i, name in enumerate(names[6:], start=6):
            _png(in_dir / name, i)
        live = stream.results(3)
        assert [r["name"] for r in live] == names[6:]
        assert all(r["threshold"] == 0 and r["decision"] == "NG" for r in live)
        stream.close()
    finally:
        stderr = stop_station(station)
    assert "threshold set to 0.0 by http 127.0.0.1" in stderr
    assert json.loads((out / "threshold.json").read_text())["threshold"] == 0
    _assert_each_once(out, names)
    assert json.loads((out / "status.json").read_text())["sinks"]["http"]["read_only"] is False


@pytest.mark.slow
def test_a_port_in_use_is_a_one_line_error(bundle: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = zsad(
            "watch", str(tmp_path), "--out", str(tmp_path / "out"), "--bundle", str(bundle),
            "--http", f"127.0.0.1:{port}", "--threshold", "0.5", "--exit-when-idle", "0",
        )  # fmt: skip
    one_line_error(result, f"--http 127.0.0.1:{port}", "cannot listen")
    assert json.loads((tmp_path / "out" / "status.json").read_text())["state"] == "error"


def _browser(profile: Path) -> Any:
    require_service(
        CHROMIUM.is_file() and CHROMEDRIVER.is_file(),
        f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})",
    )
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    require_service(webdriver is not None, "needs selenium (the dev extra)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,860",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    return webdriver.Chrome(options=options, service=service)


@pytest.mark.slow
def test_the_operator_page_shows_live_results_in_a_real_browser(
    bundle: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    in_dir, out, port = tmp_path / "in", tmp_path / "out", free_port()
    in_dir.mkdir()
    (tmp_path / "token").write_text(TOKEN)
    driver = _browser(tmp_path / "profile")
    # No threshold at first: the first parts are scored without a decision.
    station = _watch(in_dir, out, bundle, port, "--http-token-file", str(tmp_path / "token"))
    running = True
    try:
        _until(lambda: http_call(port, "GET", "/api/status")[0] == 200, station, "the server")
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 60, poll_frequency=0.1)
        wait.until(lambda d: d.find_element(By.ID, "live").text == "live")
        assert not driver.find_element(By.ID, "banner").is_displayed()
        names = [f"part_{i:02d}.png" for i in range(7)]
        for i, name in enumerate(names[:4]):  # a bank of 4: scored once the fourth comes
            _png(in_dir / name, i, "stain" if i == 1 else None)
        _until(lambda: len(_records(out)) == 4, station, "four records")
        _set_threshold(port, station, 0.41)
        for i, name in enumerate(names[4:], start=4):
            _png(in_dir / name, i, "stain" if i == 6 else None)
        (in_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
        _until(lambda: len(_records(out)) == 8, station, "eight records")
        journal = _records(out)
        expected = {
            "parts": sum(r["index"] is not None for r in journal),
            "ng": sum(r["decision"] == "NG" for r in journal),
            "ok": sum(r["decision"] == "OK" for r in journal),
            "no_decision": sum(r["index"] is not None and r["decision"] is None for r in journal),
            "rejected": sum(r["decision"] == "rejected" for r in journal),
        }
        assert expected["parts"] == 7 and expected["rejected"] == 1
        assert expected["no_decision"] == 4  # scored before the threshold existed
        assert expected["parts"] == expected["ok"] + expected["ng"] + expected["no_decision"]

        def counters(d: Any) -> dict[str, int]:
            return {k: int(d.find_element(By.ID, f"count-{k}").text) for k in expected}

        wait.until(lambda d: counters(d) == expected)
        latest = max((r for r in journal if r["index"] is not None), key=lambda r: r["id"])
        assert driver.find_element(By.ID, "latest-name").text.startswith(f"#{latest['id']} ")
        assert driver.find_element(By.ID, "decision").text == latest["decision"]
        wait.until(
            lambda d: (
                d.execute_script("return document.getElementById('latest-img').naturalWidth") > 0
            )
        )
        shown_ng = driver.find_elements(By.CSS_SELECTOR, "#ng-parts li")
        assert len(shown_ng) == expected["ng"]
        state = driver.find_element(By.ID, "state").text.lower()
        assert state in ("running", "warming-up"), state
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors  # no script error, nothing the page's security policy blocked
        driver.save_screenshot(str(tmp_path / "dashboard.png"))
        assert (tmp_path / "dashboard.png").stat().st_size > 10_000
        # The station goes away: the page says its figures are not live, across the page, and
        # the state pill no longer shows the last state it heard.
        stop_station(station)
        running = False
        wait.until(lambda d: d.find_element(By.ID, "banner").is_displayed())
        assert "NOT LIVE" in driver.find_element(By.ID, "banner").text
        assert driver.find_element(By.ID, "state").text.lower() == "stale"
        assert counters(driver) == expected  # the last figures stay readable under the banner
    finally:
        driver.quit()
        if running:
            stop_station(station)
    _assert_each_once(out, names)


# ---------------------------------------------------------------------- limits of the server


@pytest.mark.slow
def test_the_listen_backlog_takes_a_burst_of_connections(line) -> None:
    served = line()
    listing = subprocess.run(
        ["ss", "-ltnH", f"sport = :{served.port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(listing[2]) >= 128, listing  # Send-Q of a listening socket: its backlog


def _trickle(port: int, seconds: float) -> tuple[bytes, float]:
    """Send a request head one byte at a time, 5 a second, until the server answers or closes."""
    head = b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as raw:
        raw.settimeout(0.2)
        for byte in head:
            try:
                raw.sendall(bytes([byte]))
                answer = raw.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return b"", time.monotonic() - began
            return answer, time.monotonic() - began
    return b"", time.monotonic() - began


@pytest.mark.slow
def test_a_trickled_request_head_is_cut_off_at_its_deadline_and_costs_no_thread(line) -> None:
    from concurrent.futures import ThreadPoolExecutor

    served = line(header_deadline_s=1.0)
    threads_before = threading.active_count()
    with ThreadPoolExecutor(12) as pool:
        slow = [pool.submit(_trickle, served.port, 30.0) for _ in range(12)]
        time.sleep(0.5)
        # The server threads do not grow with the slow clients (12 client threads are ours).
        assert threading.active_count() <= threads_before + 12 + 2
        assert http_call(served.port, "GET", "/api/status")[0] == 200  # served beside them
        answers = [future.result() for future in slow]
    for answer, took in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert b"within 1 s" in answer and took < 5.0, (answer, took)


@pytest.mark.slow
def test_one_client_holds_at_most_its_share_of_connections(line) -> None:
    served = line()
    held = [socket.create_connection(("127.0.0.1", served.port), timeout=10) for _ in range(16)]
    try:
        refused = _raw(served.port, b"GET /api/status HTTP/1.0\r\n\r\n")
        head, _, body = refused.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), refused[:80]
        assert "one client address" in json.loads(body)["error"]
    finally:
        held.pop().close()
    deadline = time.monotonic() + 5
    while _raw(served.port, b"GET /api/status HTTP/1.0\r\n\r\n")[9:12] != b"200":
        assert time.monotonic() < deadline, "a freed connection was not given back"
        time.sleep(0.05)
    for each in held:
        each.close()


def test_the_connection_guard_caps_all_clients_and_each_one() -> None:
    from zsad.station.line.http_server import ConnectionGuard

    guard = ConnectionGuard(total=5, per_client=3)
    assert [guard.admit("10.0.0.1") for _ in range(3)] == [None] * 3
    assert "one client" in str(guard.admit("10.0.0.1"))
    assert guard.admit("10.0.0.2") is None and guard.admit("10.0.0.3") is None
    assert "at most 5" in str(guard.admit("10.0.0.4"))
    guard.release("10.0.0.1")
    assert guard.admit("10.0.0.4") is None
    assert sum(guard.open.values()) == 5


def test_a_client_cannot_lock_others_out_of_the_event_streams() -> None:
    from zsad.station.line.http_app import StreamSlots
    from zsad.station.line.http_error import HttpError

    slots = StreamSlots(total=4)
    hog = [slots.admit("10.0.0.66")[0] for _ in range(4)]
    # Full: a newcomer takes the oldest stream of the client holding the most.
    newcomer, displaced = slots.admit("10.0.0.7")
    assert displaced is hog[0] and hog[0].evicted and not newcomer.evicted
    slots.release(hog[0])
    second, displaced = slots.admit("10.0.0.7")
    assert displaced is hog[1]
    slots.release(hog[1])
    # Now each holds two: neither may take from the other.
    for client in ("10.0.0.7", "10.0.0.66"):
        with pytest.raises(HttpError) as refused:
            slots.admit(client)
        assert refused.value.status == 503 and "its share" in str(refused.value)
    assert slots.admit("10.0.0.8")[1] in (hog[2], hog[3], newcomer, second)


@pytest.mark.slow
def test_a_displaced_event_stream_ends_and_says_why(line) -> None:
    served = line(keepalive_s=0.2)
    stream = _Events(served.port)
    assert next(kind for _, kind, _ in stream if kind == "comment")  # the stream is up
    served.sink.slots.open[0].evicted = True
    served.sink.changes.notify()
    said = [text for _, kind, text in stream if kind == "comment"]  # until the stream ends
    assert said[-1].startswith("another client needed this stream")
    stream.close()
    deadline = time.monotonic() + 5
    while served.sink.describe()["streams"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.slow
def test_only_the_station_s_own_host_names_are_answered(line) -> None:
    served = line(allow_hosts=("station1.line",))
    port = served.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"station1.line:{port}", "[::1]"):
        assert http_call(port, "GET", "/api/status", Host=host)[0] == 200, host
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.2", "station1.line.evil"):
        status, answer = http_call(port, "GET", "/api/status", Host=host)
        assert status == 421 and "--http-allow-host" in answer["error"], host
    # HTTP/1.0 without a Host (no browser sends that) is served.
    assert _raw(port, b"GET /api/status HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 200")


def test_a_wildcard_bind_takes_any_ip_address_but_not_other_names() -> None:
    import asyncio

    from zsad.station.line.http_app import HostCheck, allowed_hosts

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def status(host: str, wildcard: bool) -> int:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        names = allowed_hosts("0.0.0.0" if wildcard else "192.168.10.5", (), wildcard)
        scope = {"type": "http", "http_version": "1.1", "headers": [(b"host", host.encode())]}
        asyncio.run(HostCheck(app, names, wildcard)(scope, receive, send))
        return sent[0]["status"]

    assert status("10.1.2.3:8080", True) == 200 and status("[fe80::1]:8080", True) == 200
    assert status(socket.gethostname(), True) == 200
    assert status("rebind.attacker.example", True) == 421
    assert status("192.168.10.5:8080", False) == 200
    assert status("10.1.2.3:8080", False) == 421


@pytest.mark.slow
def test_deep_or_slow_bodies_are_refused_and_the_server_serves_on(line, monkeypatch) -> None:
    from zsad.station.line import http_app

    served = line()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for body in (b"[" * 2000 + b"]" * 2000, b'{"threshold": [[[[[[1]]]]]]}'):
        status, answer = http_call(served.port, "POST", "/api/threshold", body, **bearer)
        assert status == 400 and "nests deeper" in answer["error"], answer
    monkeypatch.setattr(http_app, "BODY_DEADLINE_S", 0.5)
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as raw:
        raw.sendall(
            b"POST /api/threshold HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            + TOKEN.encode()
            + b'\r\nContent-Length: 40\r\n\r\n{"thr'
        )
        assert raw.recv(4096).startswith(b"HTTP/1.1 408")
    assert served.context.take_threshold_request() is None
    assert http_call(served.port, "GET", "/api/status")[0] == 200


@pytest.mark.slow
def test_head_answers_like_get_without_a_body(line) -> None:
    served = line()
    served.append()
    for path in ("/", "/api/status", "/api/results?since=0", "/static/app.js", "/api/events"):
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=10)
        connection.request("HEAD", path)
        response = connection.getresponse()
        assert response.status == 200 and response.read() == b"", path
        if path != "/api/events":
            assert int(response.getheader("Content-Length")) > 0, path
        connection.close()


@pytest.mark.slow
def test_refused_tokens_are_logged_at_most_once_a_minute(line) -> None:
    served = line()
    for _ in range(3):
        status, _ = http_call(served.port, "POST", "/api/threshold", b"{}",
                          Authorization="Bearer guess")  # fmt: skip
        assert status == 401
    said = [text for text in served.lines if "refused" in text]
    assert said == [
        "zsad: http: refused 1 state change(s) without the right token from 127.0.0.1 (1)"
    ]
    served.sink.stop(2.0)  # what was held back is said at the end, counted
    said = [text for text in served.lines if "refused" in text]
    assert said[1:] == [
        "zsad: http: refused 2 state change(s) without the right token from 127.0.0.1 (2)"
    ]
