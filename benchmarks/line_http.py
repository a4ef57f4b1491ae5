"""Station throughput with the HTTP sink and an operator page watching, against the same station
without it, on the same frames in the same run.

    python benchmarks/line_http.py [--bundle B] [--frames 120] [--repeats 2] [--client browser]
                                   [--out DIR] [--screenshot docs/img/dashboard.png]

Each run starts `zsad watch` on an empty hot folder, waits until it (and, with the sink, its
client) is up, then moves all frames in at once and measures images/s from the scored records
(first to last record time, warm-up excluded) and the CPU time the station process used for
them. Runs alternate off/on so drift in the machine's load hits both. Clients: `browser` (headless
Debian chromium on the operator page, as an operator would have it), `sse` (a Python client doing
what the page does: the event stream plus each new overlay) or `none` (the sink serving nobody).
The threshold is the 90th percentile of an untimed first pass, so about one part in ten is NG.
Without --bundle a zsad-tiny STAPS bundle is exported into the work folder.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zsad.data.synthetic import render_sample

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ZSAD = [sys.executable, "-m", "zsad"]


def frames(folder: Path, count: int, size: int) -> list[Path]:
    """Wood frames, one in eight with a defect."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        image, _ = render_sample("wood", rng, size, "stain" if i % 8 == 5 else None)
        paths.append(folder / f"part_{i:04d}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a running process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(port: int, path: str) -> bytes:
    """GET a path of the station's API."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        return connection.getresponse().read()
    finally:
        connection.close()


class Prober:
    """Times GET /api/status every 0.1 s while the station works: is the API responsive?"""

    def __init__(self, port: int) -> None:
        self.port = port
        self.times: list[float] = []
        self.done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.done.wait(0.1):
            start = time.perf_counter()
            try:
                get(self.port, "/api/status")
            except OSError:
                return  # the station has stopped
            self.times.append((time.perf_counter() - start) * 1e3)

    def summary(self) -> dict[str, float]:
        """p50 and p99 of the status request, in ms."""
        self.done.set()
        if not self.times:
            return {}
        p50, p99 = np.percentile(self.times, [50, 99])
        return {"status_ms_p50": round(float(p50), 1), "status_ms_p99": round(float(p99), 1)}


class SseClient:
    """What the operator page does, in Python: status, then each result and its overlay."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen = 0
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        since = json.loads(get(self.port, "/api/status"))["records"]
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        connection.request("GET", f"/api/events?since={since}")
        response = connection.getresponse()
        self.ready.set()
        kind = ""
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "result":
                record = json.loads(line[6:])
                if record.get("overlay"):
                    get(self.port, f"/api/results/{record['id']}/overlay.png")
                self.seen += 1

    def close(self) -> None:
        """Nothing to do: the thread ends with the station."""


class BrowserClient:
    """Headless chromium on the operator page."""

    def __init__(self, port: int, profile: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.support.ui import WebDriverWait

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,960",
        ):  # fmt: skip
            options.add_argument(flag)
        service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
        self.driver = webdriver.Chrome(options=options, service=service)
        self.driver.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(self.driver, 60).until(lambda d: d.find_element("id", "live").text == "live")

    def count(self) -> int:
        """Parts plus rejected, as the page shows them."""
        return sum(int(self.driver.find_element("id", f"count-{k}").text) for k in ("parts",
                   "rejected"))  # fmt: skip

    def close(self) -> None:
        """Quit the browser."""
        self.driver.quit()


def run_once(args: argparse.Namespace, work: Path, label: str, served: bool) -> dict[str, Any]:
    """One station run over all frames; images/s from the journal's record times."""
    hot, out = work / f"in-{label}", work / f"out-{label}"
    for folder in (hot, out, work / f"profile-{label}"):
        shutil.rmtree(folder, ignore_errors=True)  # a work folder used before
    hot.mkdir()
    port = free_port()
    command = [*ZSAD, "watch", str(hot), "--out", str(out), "--bundle", str(args.bundle)]
    command += ["--bank", str(args.bank), "--poll-s", "0.05", "--status-every", "1"]
    if args.threshold is not None:
        command += ["--threshold", str(args.threshold)]
    if served:
        command += ["--http", f"127.0.0.1:{port}"]
    station = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    status = out / "status.json"
    # A fresh station warms up its bank first: up is "warming-up" (or "running" with a bank).
    while not (
        status.is_file() and json.loads(status.read_text())["state"] in ("warming-up", "running")
    ):
        if station.poll() is not None:
            raise SystemExit(station.communicate()[1])
        time.sleep(0.05)
    client: Any = None
    if served and args.client == "browser":
        client = BrowserClient(port, work / f"profile-{label}")
    elif served and args.client == "sse":
        client = SseClient(port)
        client.ready.wait(30)
    cpu_start = cpu_seconds(station.pid)
    for frame in sorted(args.staged.iterdir()):
        shutil.copy(frame, hot / f".{frame.name}")
    for frame in sorted(hot.iterdir()):
        frame.rename(hot / frame.name[1:])  # all frames arrive at once, complete
    prober = Prober(port) if served else None
    journal = out / "results.jsonl"
    while station.poll() is None and (
        not journal.is_file() or journal.read_bytes().count(b"\n") < args.frames
    ):
        time.sleep(0.05)
    if station.poll() is not None:
        raise SystemExit(station.communicate()[1])
    cpu_s = cpu_seconds(station.pid) - cpu_start  # the station's own threads, this work only
    probed = prober.summary() if prober else {}
    shot = None
    if isinstance(client, BrowserClient) and args.screenshot:
        time.sleep(1.5)  # the page shows the last part and its overlay
        shot = args.screenshot
        shot.parent.mkdir(parents=True, exist_ok=True)
        if not client.driver.save_screenshot(str(shot)):
            raise SystemExit(f"{shot}: the browser could not save the screenshot there")
    station.send_signal(signal.SIGTERM)
    _, stderr = station.communicate(timeout=600)
    if client is not None:
        client.close()
    if station.returncode != 0:
        raise SystemExit(stderr)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    scored = [r for r in records if r["index"] is not None]
    # Warm-up frames are scored together once the bank is full: time from the first stream one.
    stream = [r for r in scored if r["phase"] != "warm-up"]
    times = [datetime.fromisoformat(r["time"]).timestamp() for r in stream]
    rate = (len(times) - 1) / (max(times) - min(times))
    return {
        "run": label,
        "http": served,
        "client": args.client if served else None,
        "scored": len(scored),
        "images_per_s": round(rate, 2),
        "cpu_ms_per_image": round(cpu_s * 1e3 / len(scored), 1),
        "screenshot": str(shot) if shot else None,
        **probed,
        "scores": [r["score"] for r in scored],
    }


def main() -> None:
    """Parse the options, run the passes, print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels")
    parser.add_argument("--bank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--client", choices=("browser", "sse", "none"), default="browser")
    parser.add_argument("--out", type=Path, help="write line_http.json here")
    parser.add_argument("--screenshot", type=Path, help="save the page after the last run")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="zsad-line-http-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.bundle is None:
        args.bundle = work / "bundle"
        if not (args.bundle / "bundle.json").is_file():
            export = ["export", "--model", "zsad-tiny", "--method", "staps", "--image-size", "56"]
            subprocess.run([*ZSAD, *export, "--out", str(args.bundle)], check=True)
    args.staged = work / "frames"
    if not args.staged.is_dir():
        frames(args.staged, args.frames, args.size)
    args.threshold = None
    first = run_once(args, work, "calibrate", served=False)
    args.threshold = round(float(np.quantile(first["scores"], 0.9)), 5)
    runs = []
    screenshot, args.screenshot = args.screenshot, None
    for repeat in range(args.repeats):
        for served in (False, True):
            if served and repeat == args.repeats - 1:
                args.screenshot = screenshot
            runs.append(run_once(args, work, f"{repeat}-{'on' if served else 'off'}", served))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "scores"}), flush=True)
    off = statistics.median(r["images_per_s"] for r in runs if not r["http"])
    on = statistics.median(r["images_per_s"] for r in runs if r["http"])
    cpu_off = statistics.median(r["cpu_ms_per_image"] for r in runs if not r["http"])
    cpu_on = statistics.median(r["cpu_ms_per_image"] for r in runs if r["http"])
    summary = {
        "frames": args.frames,
        "size": args.size,
        "bank": args.bank,
        "client": args.client,
        "threshold": args.threshold,
        "images_per_s_off": off,
        "images_per_s_on": on,
        "on_over_off": round(on / off, 3),
        "station_cpu_ms_per_image_off": cpu_off,
        "station_cpu_ms_per_image_on": cpu_on,
        "runs": [{k: v for k, v in r.items() if k != "scores"} for r in runs],
    }
    print(f"| http sink (median of {args.repeats}) | images/s | station CPU ms/image |")
    print(f"|---|---|---|\n| off | {off:.2f} | {cpu_off:.1f} |")
    print(f"| on, {args.client} client | {on:.2f} ({on / off:.0%}) | {cpu_on:.1f} |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "line_http.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
