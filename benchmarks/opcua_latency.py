"""Latency from the journal to an OPC UA client: a record is appended (and fsync'd) the way the
station appends it, and a subscribed asyncua client notes when its ResultId arrives.

    python benchmarks/opcua_latency.py [--records 300] [--rate 50] [--publishing-ms 10]

Prints JSON: p50/p99/max milliseconds from the end of the journal write (the moment the station
wakes its sinks) to the client's data-change notification, over a localhost connection with no
security. No model runs: this times the interface alone; ``measure_opcua_latency`` is the
function to call from elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from zsad.station.journal import Journal
from zsad.station.line.config import OpcuaConfig
from zsad.station.line.hub import LineContext
from zsad.station.line.opcua import NAMESPACE, OpcuaSink


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure_opcua_latency(
    records: int = 300, rate_hz: float = 50.0, publishing_ms: float = 10.0
) -> dict[str, Any]:
    """Journal write -> OPC UA notification latency (ms) for ``records`` records at ``rate_hz``,
    with a client subscription publishing every ``publishing_ms``."""
    from asyncua import Client, ua

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        journal = Journal(out / "results.jsonl")
        context = LineContext(out, echo=lambda line: None)
        url = f"opc.tcp://127.0.0.1:{_free_port()}"
        sink = OpcuaSink(OpcuaConfig(url, "none"))
        sink.start(context)
        written: dict[int, float] = {}
        received: dict[int, float] = {}

        def write() -> None:
            for i in range(records):
                record = {"index": i, "name": f"{i}.png", "path": f"/line/{i}.png"}
                record |= {"score": 0.5, "decision": "OK", "threshold": 1.0, "time": None}
                journal.append(record)
                written[i] = time.perf_counter()
                context.journal_grew(journal.count)
                time.sleep(1.0 / rate_hz)

        class Handler:
            def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
                received.setdefault(value, time.perf_counter())

        async def client() -> None:
            async with Client(url, timeout=30) as opc:
                index = await opc.get_namespace_index(NAMESPACE)
                node = opc.get_node(ua.NodeId("Station.LastResult.ResultId", index))
                subscription = await opc.create_subscription(publishing_ms, Handler())
                await subscription.subscribe_data_change(node, queuesize=1000)
                writer = threading.Thread(target=write)
                writer.start()
                deadline = time.monotonic() + records / rate_hz + 30
                while len(received) < records + 1 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                writer.join()

        try:
            asyncio.run(client())
        finally:
            sink.stop(3.0)
            journal.close()
    latencies = [(received[i] - written[i]) * 1000 for i in written if i in received]
    return {
        "records": records,
        "rate_hz": rate_hz,
        "publishing_ms": publishing_ms,
        "received": len(latencies),
        "p50_ms": round(_percentile(latencies, 0.50), 2) if latencies else None,
        "p99_ms": round(_percentile(latencies, 0.99), 2) if latencies else None,
        "max_ms": round(max(latencies), 2) if latencies else None,
    }


def main() -> None:
    """Command line: print the measurement as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0, help="records per second")
    parser.add_argument("--publishing-ms", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(measure_opcua_latency(args.records, args.rate, args.publishing_ms)))


if __name__ == "__main__":
    main()
