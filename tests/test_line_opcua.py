"""The station's OPC UA interface, as a PLC sees it: a real asyncua client against `zsad watch`."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import (
    free_port,
    one_line_error,
    popen_watch,
    station_records,
    stop_station,
    wait_for_lines,
    write_frame,
    zsad,
)
from zsad.errors import ZsadError

asyncua = pytest.importorskip("asyncua")
from asyncua import Client, ua  # noqa: E402
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256  # noqa: E402

pytestmark = pytest.mark.slow

NAMESPACE = "urn:zsad:station"
CLIENT_URI = "urn:zsad:test:plc"


def _certificate(folder: Path, name: str, uri: str, *, client: bool) -> tuple[Path, Path]:
    """A self-signed RSA certificate and its key, the way docs/line.md tells users to make one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    alt_names = [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.der", folder / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _watch(in_dir: Path, out: Path, bundle: Path, *args: str) -> subprocess.Popen[str]:
    return popen_watch(
        str(in_dir), "--out", str(out), "--bundle", str(bundle), "--bank", "4", "--poll-s", "0.05",
        *args,
    )  # fmt: skip


def _wait_for_records(out: Path, count: int, station: subprocess.Popen[str]) -> list[dict]:
    wait_for_lines(out / "results.jsonl", count, station)
    return station_records(out)


class Station:
    """The station object as a client reads it, by the documented node ids."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.ns = -1

    async def open(self) -> Station:
        self.ns = await self.client.get_namespace_index(NAMESPACE)
        return self

    def node(self, path: str) -> Any:
        return self.client.get_node(ua.NodeId(path, self.ns))

    async def read(self, *paths: str) -> dict[str, Any]:
        values = await self.client.read_values([self.node(p) for p in paths])
        return dict(zip(paths, values, strict=True))

    async def wait_for(self, path: str, value: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while (current := (await self.read(path))[path]) != value:
            assert time.monotonic() < deadline, f"{path} stayed {current!r}, expected {value!r}"
            await asyncio.sleep(0.05)

    async def acknowledge(self, result_id: int) -> None:
        method = ua.QualifiedName("Acknowledge", self.ns)
        await self.node("Station").call_method(method, ua.Variant(result_id, ua.VariantType.Int64))


def _expected(records: list[dict]) -> dict[str, Any]:
    """What the counters and the last result must say for these journal records."""
    last = records[-1]
    decisions = [r["decision"] for r in records]
    return {
        "Station.Counters.Parts": sum(d != "rejected" for d in decisions),
        "Station.Counters.OK": decisions.count("OK"),
        "Station.Counters.NG": decisions.count("NG"),
        "Station.Counters.Rejected": decisions.count("rejected"),
        "Station.LastResult.ResultId": last["id"],
        "Station.LastResult.Index": last["index"],
        "Station.LastResult.PartId": last["name"],
        "Station.LastResult.Path": last["path"],
        "Station.LastResult.Score": pytest.approx(last["score"]),
        "Station.LastResult.Decision": last["decision"],
        "Station.LastResult.IsNG": last["decision"] == "NG",
        "Station.LastResult.Threshold": pytest.approx(last["threshold"]),
        "Station.LastResult.ResultState": 1,
        "Station.LastResult.CreationTime": datetime.datetime.fromisoformat(last["time"]),
    }


async def _assert_matches_journal(station: Station, records: list[dict]) -> None:
    expected = _expected(records)
    await station.wait_for("Station.LastResult.ResultId", records[-1]["id"])
    got = await station.read(*expected)
    assert got == expected


class Notifications:
    """Data-change notifications of one subscription, by node id, in arrival order."""

    def __init__(self) -> None:
        self.values: dict[str, list[Any]] = {}

    def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
        self.values.setdefault(node.nodeid.Identifier, []).append(value)


def test_a_plc_reads_subscribes_acknowledges_and_reconnects(bundle: Path, tmp_path: Path) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for i in range(5):
        write_frame(in_dir / f"{i:03d}.png", i, "stain" if i == 3 else None)
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    # A threshold below every score: each part is NG, so the NG counter moves with the parts.
    station = _watch(
        in_dir, out, bundle, "--threshold", "-1e9", "--status-every", "1",
        "--opcua", url, "--opcua-security", "none",
    )  # fmt: skip
    try:
        first = _wait_for_records(out, 5, station)

        async def plc() -> None:
            async with Client(url, timeout=30) as client:
                view = await Station(client).open()
                await _assert_matches_journal(view, first)
                # Warm-up is over: the next status (each second here) says so.
                machine = "Station.VisionStateMachine.CurrentState"
                await view.wait_for("Station.State", "running")
                await view.wait_for(machine, "Operational")
                seen = Notifications()
                subscription = await client.create_subscription(20, seen)
                watched = ["Station.LastResult.ResultId", "Station.Counters.NG"]
                await subscription.subscribe_data_change(
                    [view.node(path) for path in watched], queuesize=64
                )
                for i in range(5, 8):
                    write_frame(in_dir / f"{i:03d}.png", i)
                records = await asyncio.to_thread(_wait_for_records, out, 8, station)
                await _assert_matches_journal(view, records)
                # Every new result is notified, in journal order, each once.
                expected = {watched[0]: [4, 5, 6, 7], watched[1]: [5, 6, 7, 8]}
                deadline = time.monotonic() + 30
                while seen.values != expected and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert seen.values == expected
                await view.acknowledge(6)
                with pytest.raises(ua.UaStatusCodeError, match="BadOutOfRange"):
                    await view.acknowledge(99)
                assert (await view.read("Station.AcknowledgedResultId")) == {
                    "Station.AcknowledgedResultId": 6
                }

            # A PLC that drops the connection finds everything where it was.
            client = Client(url, timeout=30)
            await client.connect()
            try:
                view = await Station(client).open()
                await _assert_matches_journal(view, records)
                # The writable node acknowledges too.
                await view.node("Station.AcknowledgedResultId").write_value(
                    ua.Variant(7, ua.VariantType.Int64)
                )
                beat = (await view.read("Station.Heartbeat"))["Station.Heartbeat"]
                await view.wait_for("Station.Heartbeat", beat + 1)
                await view.wait_for("Station.AcknowledgedResultId", 7)
                # A station that stops says so before the connection ends.
                states = Notifications()
                subscription = await client.create_subscription(20, states)
                await subscription.subscribe_data_change(
                    [view.node("Station.State"), view.node(machine)]
                )
                station.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + 30
                while station.poll() is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert states.values["Station.State"][-1] == "stopped"
                assert states.values[machine][-1] == "Halted"
            finally:
                with contextlib.suppress(Exception):  # the server may be gone already
                    await client.disconnect()

        asyncio.run(plc())
    finally:
        stop_station(station)
    status = json.loads((out / "status.json").read_text())
    described = status["sinks"]["opcua"]
    assert described["endpoint"] == url and described["error"] is None
    assert described["last_result_id"] == 7
    assert described["state"] == "stopped"  # the status written once the server has closed
    assert json.loads((out / "opcua-ack.json").read_text())["acknowledged_id"] == 7


def test_signed_and_encrypted_for_trusted_clients_with_counts_from_earlier_runs(
    bundle: Path, tmp_path: Path
) -> None:
    in_dir, out = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for i in range(4):
        write_frame(in_dir / f"{i:03d}.png", i)
    # An earlier run, without OPC UA: its parts are all OK.
    earlier = zsad(
        "watch", str(in_dir), "--out", str(out), "--bundle", str(bundle), "--bank", "4",
        "--threshold", "1e9", "--exit-when-idle", "0.5",
    )  # fmt: skip
    assert earlier.returncode == 0, earlier.stderr
    pki = tmp_path / "pki"
    server_cert, server_key = _certificate(pki, "station", "urn:zsad:test:station", client=False)
    stranger_cert, stranger_key = _certificate(pki, "stranger", CLIENT_URI, client=True)
    # The trust folder holds the PLC's certificate only (its key lives elsewhere).
    client_cert, client_key = _certificate(tmp_path / "trusted", "plc", CLIENT_URI, client=True)
    client_key = client_key.rename(pki / "plc-key.pem")
    for i in range(4, 6):
        write_frame(in_dir / f"{i:03d}.png", i)
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    station = _watch(
        in_dir, out, bundle, "--threshold", "-1e9", "--opcua", url,
        "--opcua-security", "sign-and-encrypt", "--opcua-cert", str(server_cert),
        "--opcua-key", str(server_key), "--opcua-trust", str(tmp_path / "trusted"),
    )  # fmt: skip

    async def secured(cert: Path, key: Path) -> Client:
        client = Client(url, timeout=30)
        client.application_uri = CLIENT_URI
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            str(cert),
            str(key),
            server_certificate=str(server_cert),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
        return client

    async def plc() -> None:
        records = await asyncio.to_thread(_wait_for_records, out, 6, station)
        client = await secured(client_cert, client_key)
        async with client:
            view = await Station(client).open()
            # Four OK parts from the earlier run, two NG from this one: counted from the journal.
            await _assert_matches_journal(view, records)
            assert await view.read("Station.Counters.OK", "Station.Counters.NG") == {
                "Station.Counters.OK": 4,
                "Station.Counters.NG": 2,
            }
            await view.acknowledge(5)
        # Without security no session, even for a client that skips the endpoint check.
        anonymous = Client(url, timeout=10)
        await anonymous.connect_socket()
        try:
            await anonymous.send_hello()
            await anonymous.open_secure_channel()
            with pytest.raises(ua.UaError, match="No matching endpoints"):
                await anonymous.create_session()
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                await anonymous.activate_session()
        finally:
            anonymous.disconnect_socket()
        # A certificate the station does not trust: no session either.
        stranger = await secured(stranger_cert, stranger_key)
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            async with stranger:
                await stranger.get_namespace_index(NAMESPACE)

    try:
        asyncio.run(plc())
    finally:
        stderr = stop_station(station)
    assert "admitted: the clients in" in stderr
    assert json.loads((out / "opcua-ack.json").read_text())["acknowledged_id"] == 5


def test_bad_opcua_settings_are_one_line_errors(bundle: Path, tmp_path: Path) -> None:
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    cert, key = _certificate(tmp_path / "pki", "station", "urn:zsad:test:station", client=False)
    other_cert, _ = _certificate(tmp_path / "pki", "other", "urn:zsad:test:other", client=False)
    garbage = tmp_path / "garbage.der"
    garbage.write_bytes(b"not a certificate")

    def watch(*args: str) -> subprocess.CompletedProcess[str]:
        out = str(tmp_path / "out")
        return zsad("watch", str(in_dir), "--out", out, "--bundle", str(bundle), *args)

    url = "opc.tcp://127.0.0.1:4840"
    one_line_error(watch("--opcua", "http://127.0.0.1:4840"), "give opc.tcp://HOST:PORT")
    # Without --opcua-security the station will not serve without security.
    one_line_error(watch("--opcua", url), "--opcua-security sign-and-encrypt needs --opcua-cert")
    one_line_error(
        watch("--opcua", url, "--opcua-security", "sign", "--opcua-cert", str(garbage),
              "--opcua-key", str(key)),
        str(garbage), "not an X.509 certificate",
    )  # fmt: skip
    one_line_error(
        watch("--opcua", url, "--opcua-security", "sign", "--opcua-cert", str(other_cert),
              "--opcua-key", str(key)),
        str(key), "does not belong to the certificate",
    )  # fmt: skip
    one_line_error(
        watch("--opcua", url, "--opcua-security", "none", "--opcua-cert", str(cert)),
        "only with --opcua-security sign",
    )
    # A port already taken is found when the server starts, before any image is scored.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = watch(
            "--opcua", f"opc.tcp://127.0.0.1:{port}", "--opcua-security", "none",
            "--threshold", "0.5",
        )  # fmt: skip
    one_line_error(busy, f"127.0.0.1:{port}: cannot listen on 127.0.0.1:{port} (Address already")
    journal = tmp_path / "out" / "results.jsonl"
    assert not journal.exists() or journal.read_text() == ""


def test_an_unreadable_image_is_a_failed_result_and_acknowledgements_outlive_restarts(
    tmp_path: Path,
) -> None:
    from zsad.station.journal import Journal
    from zsad.station.line.config import OpcuaConfig
    from zsad.station.line.hub import LineContext
    from zsad.station.line.opcua import OpcuaSink

    journal = Journal(tmp_path / "results.jsonl")
    scored = {"index": 0, "name": "a.png", "path": "/hot/a.png", "score": 0.2, "decision": "OK"}
    journal.append({**scored, "threshold": 0.5, "time": "2026-01-02T03:04:05.678+00:00"})
    unreadable = {"index": None, "name": "b.png", "path": "/hot/b.png", "score": None}
    journal.append({**unreadable, "decision": "rejected", "error": "cannot decode", "time": None})
    (tmp_path / "opcua-ack.json").write_text('{"acknowledged_id": 0}')
    context = LineContext(tmp_path, echo=lambda line: None)
    context.journal_grew(journal.count)
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    sink = OpcuaSink(OpcuaConfig(url, "none"))
    sink.start(context)

    async def plc() -> dict[str, Any]:
        async with Client(url, timeout=30) as client:
            view = await Station(client).open()
            return await view.read(
                "Station.Counters.Parts", "Station.Counters.Rejected",
                "Station.LastResult.ResultId", "Station.LastResult.ResultState",
                "Station.LastResult.Decision", "Station.LastResult.Index",
                "Station.AcknowledgedResultId",
            )  # fmt: skip

    try:
        got = asyncio.run(plc())
        described = sink.describe()
    finally:
        sink.stop(3.0)
        journal.close()
    assert got == {
        "Station.Counters.Parts": 1,
        "Station.Counters.Rejected": 1,
        "Station.LastResult.ResultId": 1,
        "Station.LastResult.ResultState": 4,
        "Station.LastResult.Decision": "rejected",
        "Station.LastResult.Index": -1,
        "Station.AcknowledgedResultId": 0,
    }
    assert described["state"] == "serving" and described["acknowledged_id"] == 0
    # A damaged acknowledgement file, or one from another journal, is named, not ignored.
    (tmp_path / "opcua-ack.json").write_text("{")
    with pytest.raises(ZsadError, match="opcua-ack.json: not an acknowledgement file"):
        OpcuaSink(OpcuaConfig(url, "none")).start(context)
    (tmp_path / "opcua-ack.json").write_text('{"acknowledged_id": 2}')
    with pytest.raises(ZsadError, match="acknowledges result 2 but the journal holds 2 records"):
        OpcuaSink(OpcuaConfig(url, "none")).start(context)


def test_acknowledge_with_an_argument_of_the_wrong_type_is_a_type_mismatch(
    tmp_path: Path,
) -> None:
    from zsad.station.journal import Journal
    from zsad.station.line.config import OpcuaConfig
    from zsad.station.line.hub import LineContext
    from zsad.station.line.opcua import OpcuaSink

    journal = Journal(tmp_path / "results.jsonl")
    for index in range(2):
        journal.append({"index": index, "name": f"{index}.png", "score": 0.1, "decision": "OK"})
    context = LineContext(tmp_path, echo=lambda line: None)
    context.journal_grew(journal.count)
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    sink = OpcuaSink(OpcuaConfig(url, "none"))
    sink.start(context)

    async def plc() -> dict[str, Any]:
        async with Client(url, timeout=30) as client:
            view = await Station(client).open()
            method = ua.QualifiedName("Acknowledge", view.ns)
            wrong = [
                ua.Variant("abc"),
                ua.Variant(1.0, ua.VariantType.Double),
                ua.Variant(True, ua.VariantType.Boolean),
                ua.Variant(1, ua.VariantType.Int32),
                ua.Variant([1], ua.VariantType.Int64),
            ]
            for argument in wrong:
                with pytest.raises(ua.UaStatusCodeError, match="BadTypeMismatch"):
                    await view.node("Station").call_method(method, argument)
                with pytest.raises(ua.UaStatusCodeError, match="BadTypeMismatch"):
                    await view.node("Station.AcknowledgedResultId").write_value(argument)
            with pytest.raises(ua.UaStatusCodeError, match="BadOutOfRange"):
                await view.acknowledge(2)
            await view.acknowledge(1)
            return await view.read("Station.AcknowledgedResultId")

    try:
        got = asyncio.run(plc())
    finally:
        sink.stop(3.0)
        journal.close()
    assert got == {"Station.AcknowledgedResultId": 1}


def test_trigger_carries_the_part_id_and_a_refusal_is_a_bad_status(tmp_path: Path) -> None:
    from zsad.station.journal import Journal
    from zsad.station.line.config import OpcuaConfig
    from zsad.station.line.hub import LineContext, TriggerRefused
    from zsad.station.line.opcua import OpcuaSink

    journal = Journal(tmp_path / "results.jsonl")
    context = LineContext(tmp_path, echo=lambda line: None)
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    sink = OpcuaSink(OpcuaConfig(url, "none"))
    sink.start(context)
    asked: list[str | None] = []

    def unreachable(part_id: str | None) -> None:
        raise TriggerRefused("camera unreachable", busy=True)

    async def plc() -> None:
        async with Client(url, timeout=30) as client:
            view = await Station(client).open()
            method = ua.QualifiedName("Trigger", view.ns)

            async def trigger(argument: ua.Variant) -> Any:
                return await view.node("Station").call_method(method, argument)

            with pytest.raises(ua.UaStatusCodeError, match="BadInvalidState"):
                await trigger(ua.Variant("P-1"))  # a hot folder takes no triggers
            context.serve_triggers(asked.append)
            with pytest.raises(ua.UaStatusCodeError, match="BadTypeMismatch"):
                await trigger(ua.Variant(7, ua.VariantType.Int64))
            with pytest.raises(ua.UaStatusCodeError, match="BadInvalidArgument"):
                await trigger(ua.Variant("x" * 65))
            await trigger(ua.Variant("P-1"))
            await trigger(ua.Variant(""))
            context.serve_triggers(unreachable)
            with pytest.raises(ua.UaStatusCodeError, match="BadResourceUnavailable"):
                await trigger(ua.Variant("P-2"))

    try:
        asyncio.run(plc())
    finally:
        sink.stop(3.0)
        journal.close()
    assert asked == ["P-1", None]
