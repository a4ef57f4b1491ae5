"""Secrets of the line sinks: a secret file gives its first line and is warned about when others
can read it, and no URL or address option takes credentials (they would sit in the process's
command line). Needs no broker, server or bundle."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import one_line_error, zsad
from zsad.errors import ZsadError
from zsad.runtime.triton_backend import parse_url
from zsad.station.line.config import HttpConfig, MqttConfig, OpcuaConfig


def _secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_secret_file_gives_its_first_line(tmp_path: Path, capsys) -> None:
    token = _secret_file(tmp_path / "token", "s3cret-token\nrotated on 2026-01-01\n")
    password = _secret_file(tmp_path / "password", "hunter2  \r\n\n")
    assert HttpConfig("127.0.0.1:8080", token).token() == "s3cret-token"
    assert MqttConfig("mqtt://127.0.0.1", "t", "bob", password).password() == "hunter2"
    assert capsys.readouterr().err == ""  # 0600: nothing to warn about


@pytest.mark.parametrize("text", ["", "\n", "  \nsecond line\n"])
def test_an_empty_first_line_is_refused_naming_the_file(tmp_path: Path, text: str) -> None:
    token = _secret_file(tmp_path / "token", text)
    with pytest.raises(ZsadError) as error:
        HttpConfig("127.0.0.1:8080", token).check()
    message = str(error.value)
    assert "\n" not in message and str(token) in message and "first line" in message
    assert "second" not in message


def test_a_secret_file_open_to_others_is_warned_about_once(tmp_path: Path, capsys) -> None:
    password = _secret_file(tmp_path / "password", "hunter2\n", mode=0o640)
    config = MqttConfig("mqtt://127.0.0.1", "t", "bob", password)
    config.check()
    assert config.password() == "hunter2"  # read again, as at each reconnect
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("zsad: warning: ") and str(password) in lines[0]
    assert "0640" in lines[0] and "hunter2" not in lines[0]


_REFUSED: list[tuple[str, Callable[[], Any], tuple[str, ...]]] = [
    (
        "--mqtt",
        lambda: MqttConfig("mqtt://bob:SECRET@127.0.0.1:1883", "t").check(),
        ("--mqtt-username", "--mqtt-password-file", "$ZSAD_MQTT_PASSWORD"),
    ),
    (
        "--mqtt",
        lambda: MqttConfig("mqtts://bob@broker.example:8883", "t").check(),
        ("--mqtt-username",),
    ),
    (
        "--mqtt",  # the wrong scheme must not be the message that repeats the URL
        lambda: MqttConfig("http://bob:SECRET@127.0.0.1:1883", "t").check(),
        ("$ZSAD_MQTT_PASSWORD",),
    ),
    (
        "--opcua",
        lambda: OpcuaConfig("opc.tcp://bob:SECRET@127.0.0.1:4840", "none").check(),
        ("--opcua-trust",),
    ),
    (
        "--http",
        lambda: HttpConfig("bob:SECRET@127.0.0.1:8080").check(),
        ("--http-token-file", "$ZSAD_HTTP_TOKEN"),
    ),
    (
        "--triton",
        lambda: parse_url("grpcs://bob:SECRET@127.0.0.1:8001"),
        ("--triton-token-file", "$ZSAD_TRITON_TOKEN"),
    ),
    ("--triton", lambda: parse_url("bob:SECRET@127.0.0.1"), ()),
]


@pytest.mark.parametrize(("flag", "parse", "hints"), _REFUSED)
def test_credentials_in_a_url_are_refused_without_repeating_them(
    flag: str, parse: Callable[[], Any], hints: tuple[str, ...]
) -> None:
    with pytest.raises(ZsadError) as error:
        parse()
    message = str(error.value)
    assert message.startswith(f"{flag}: ") and "\n" not in message
    assert "SECRET" not in message and "bob" not in message
    for hint in hints:
        assert hint in message, message


@pytest.mark.slow
def test_watch_refuses_an_mqtt_url_with_credentials_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = zsad(
        "watch", str(tmp_path), "--out", str(out), "--bundle", str(tmp_path / "bundle"),
        "--mqtt", "mqtt://bob:SECRET@127.0.0.1:1883",
    )  # fmt: skip
    one_line_error(result, "--mqtt: ", "$ZSAD_MQTT_PASSWORD", "--mqtt-password-file")
    assert "SECRET" not in result.stderr and not out.exists()
