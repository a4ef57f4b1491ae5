"""The Triton client's connection settings against a stand-in tritonclient: TLS schemes and the
CA file reach the client's constructor, and the access token goes with every request."""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import (
    TORCH,
    one_line_error,
    require_service,
    triton_client_installed,
    write_frame,
    zsad,
)
from zsad.api.detector import Detector
from zsad.api.encoders import EncoderSpec, open_triton
from zsad.errors import ZsadError
from zsad.formats.triton import PARAM_BUNDLE, PARAM_FILE
from zsad.runtime import triton_backend
from zsad.runtime.triton_backend import TOKEN_ENV, TritonBackend, parse_url

# The HTTPS settings name gevent's SSL context, which comes with the triton extra.
require_service(triton_client_installed(), "no Triton client: pip install -e '.[triton]'")

SIZE = 8
META = {
    "format": 1,
    "method": "staps",
    "backbone": "stand-in",
    "image_size": SIZE,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "outputs": ["cls", "taps"],
    "input": {"name": "pixels", "shape": ["batch", 3, SIZE, SIZE]},
    "files": {"encoder.onnx": {"sha256": "ab" * 32, "bytes": 1}},
}
CONFIG = {
    "max_batch_size": 4,
    "input": [{"name": "pixels", "dims": [3, SIZE, SIZE]}],
    "output": [{"name": "cls"}, {"name": "taps"}],
    "parameters": {
        PARAM_BUNDLE: {"string_value": json.dumps(META)},
        PARAM_FILE: {"string_value": "encoder.onnx"},
    },
}


class StandInClient:
    """tritonclient's InferenceServerClient serving CONFIG; records its arguments and the
    headers of every request."""

    made: list[StandInClient] = []

    def __init__(self, url: str, **options: Any) -> None:
        self.url, self.options = url, options
        self.requests: list[tuple[str, Any]] = []
        StandInClient.made.append(self)

    def _record(self, name: str, headers: Any) -> None:
        self.requests.append((name, headers))

    def is_server_live(self, headers: Any = None, client_timeout: Any = None) -> bool:
        self._record("is_server_live", headers)
        return True

    def is_model_ready(self, model: str, headers: Any = None, client_timeout: Any = None) -> bool:
        self._record("is_model_ready", headers)
        return True

    def get_model_config(self, model: str, headers: Any = None, **kwargs: Any) -> dict:
        self._record("get_model_config", headers)
        return {"config": CONFIG} if kwargs.get("as_json") else CONFIG

    def infer(self, model: str, inputs: list, headers: Any = None, **kwargs: Any) -> Any:
        self._record("infer", headers)
        batch = inputs[0].shape[0]
        return types.SimpleNamespace(as_numpy=lambda name: np.zeros((batch, 2), np.float32))

    def close(self) -> None:
        pass


class StandInInput:
    def __init__(self, name: str, shape: list[int], dtype: str) -> None:
        self.shape = shape

    def set_data_from_numpy(self, array: np.ndarray) -> None:
        pass


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> list[StandInClient]:
    module = types.SimpleNamespace(
        InferenceServerClient=StandInClient,
        InferInput=StandInInput,
        InferRequestedOutput=lambda name: name,
    )
    monkeypatch.setattr(triton_backend, "_client_module", lambda protocol: module)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    StandInClient.made = []
    return StandInClient.made


@pytest.mark.parametrize(
    ("url", "scheme", "address"),
    [
        ("grpcs://gpu-server", "grpcs", "gpu-server:8001"),
        ("https://gpu-server", "https", "gpu-server:8000"),
        ("https://proxy.example:443", "https", "proxy.example:443"),
        ("grpc://gpu-server:9001", "grpc", "gpu-server:9001"),
        ("gpu-server", "grpc", "gpu-server:8001"),
    ],
)
def test_tls_schemes_are_accepted(url: str, scheme: str, address: str) -> None:
    assert parse_url(url) == (scheme, address)


def test_other_schemes_are_refused_in_one_line() -> None:
    with pytest.raises(ZsadError, match="grpcs:// or https:// for TLS"):
        parse_url("wss://gpu-server:8001")


def _pem(tmp_path: Path) -> Path:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    return ca


@pytest.mark.parametrize("with_ca", [False, True])
def test_grpcs_asks_the_client_for_tls(
    clients: list[StandInClient], tmp_path: Path, with_ca: bool
) -> None:
    ca = _pem(tmp_path) if with_ca else None
    TritonBackend("grpcs://gpu-server", "zsad", ca_file=ca).close()
    (client,) = clients
    assert client.url == "gpu-server:8001"
    assert client.options == {"ssl": True, "root_certificates": None if ca is None else str(ca)}


@pytest.mark.parametrize("with_ca", [False, True])
def test_https_asks_the_client_for_a_verifying_tls_context(
    clients: list[StandInClient], tmp_path: Path, with_ca: bool
) -> None:
    import gevent.ssl

    ca = _pem(tmp_path) if with_ca else None
    TritonBackend("https://gpu-server:8443", "zsad", timeout_s=3, ca_file=ca).close()
    (client,) = clients
    assert client.url == "gpu-server:8443"
    options = dict(client.options)
    assert options.pop("ssl") is True
    assert options.pop("ssl_context_factory") is gevent.ssl.create_default_context
    assert options.pop("connection_timeout") == options.pop("network_timeout") == 3
    assert options == ({} if ca is None else {"ssl_options": {"ca_certs": str(ca)}})


def test_plain_schemes_ask_for_no_tls(clients: list[StandInClient]) -> None:
    TritonBackend("grpc://gpu-server", "zsad").close()
    TritonBackend("http://gpu-server", "zsad", timeout_s=3).close()
    assert [c.options for c in clients] == [{}, {"connection_timeout": 3, "network_timeout": 3}]


def test_a_ca_file_without_tls_or_missing_is_refused(
    clients: list[StandInClient], tmp_path: Path
) -> None:
    with pytest.raises(ZsadError, match=r"^--triton-ca .*: only for grpcs:// or https://"):
        TritonBackend("grpc://gpu-server", "zsad", ca_file=_pem(tmp_path))
    with pytest.raises(ZsadError, match=r"^--triton-ca .*missing.pem: cannot read it"):
        TritonBackend("grpcs://gpu-server", "zsad", ca_file=tmp_path / "missing.pem")
    assert not clients  # refused before any connection


def _served(spec: EncoderSpec) -> StandInClient:
    with open_triton(spec) as backend:
        backend.run(np.zeros((6, 3, SIZE, SIZE), np.float32))  # two requests: max batch 4
    return StandInClient.made[-1]


def test_a_detector_connects_to_and_describes_the_served_model_once(
    clients: list[StandInClient],
) -> None:
    spec = EncoderSpec(triton="grpc://gpu-server", triton_model="zsad")
    with Detector.from_spec(spec) as detector:
        assert detector.method.name == "musc"  # the default, which a STAPS bundle serves
    assert len(clients) == 1
    assert [name for name, _ in clients[0].requests].count("get_model_config") == 1


def test_the_token_file_goes_as_a_bearer_header_on_every_request(
    clients: list[StandInClient], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\nsecond line ignored\n")
    token.chmod(0o600)
    monkeypatch.setenv(TOKEN_ENV, "from-the-environment")  # the file wins
    for url in ("grpcs://gpu-server", "https://gpu-server"):
        spec = EncoderSpec(triton=url, triton_model="zsad", triton_token_file=token)
        client = _served(spec)
        names = [name for name, _ in client.requests]
        assert names == ["is_server_live", "is_model_ready", "get_model_config", "infer", "infer"]
        assert [h for _, h in client.requests] == [{"authorization": "Bearer s3cret"}] * 5


def test_the_token_comes_from_the_environment_else_none_is_sent(
    clients: list[StandInClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = EncoderSpec(triton="grpcs://gpu-server", triton_model="zsad")
    assert [h for _, h in _served(spec).requests] == [None] * 5
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    headers = [h for _, h in _served(spec).requests]
    assert headers == [{"authorization": "Bearer from-env"}] * 5


def test_an_empty_token_file_is_one_line(clients: list[StandInClient], tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("\n")
    spec = EncoderSpec(triton="grpcs://gpu-server", triton_model="zsad", triton_token_file=token)
    with pytest.raises(ZsadError, match="first line of the Triton token file is empty"):
        open_triton(spec)


def test_a_token_over_a_plain_connection_is_warned_about(
    clients: list[StandInClient], capsys: pytest.CaptureFixture[str]
) -> None:
    TritonBackend("http://127.0.0.2:8000", "zsad", token="t").close()
    TritonBackend("https://127.0.0.2:8000", "zsad", token="t").close()
    assert capsys.readouterr().err.count("token is sent unencrypted") == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--triton", "grpcs://127.0.0.1:1", "--triton-ca", "{tmp}/missing.pem"), "--triton-ca"),
        (("--triton", "grpc://127.0.0.1:1", "--triton-ca", "{tmp}/ca.pem"), "only for grpcs://"),
        (("--triton", "grpcs://127.0.0.1:1", "--triton-token-file", "{tmp}/none"), "Triton token"),
    ],
)
def test_the_command_line_settings_fail_in_one_line(
    tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    _pem(tmp_path)
    write_frame(tmp_path / "a.png", 0)
    result = zsad(
        "infer", str(tmp_path / "a.png"), *(a.format(tmp=tmp_path) for a in args),
        "--triton-model", "zsad", "--out", str(tmp_path / "out"), block=TORCH,
    )  # fmt: skip
    one_line_error(result, needle)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--triton-ca", "{tmp}/missing.pem"), "cannot read it"),
        (("--triton-token-file", "{tmp}/none"), "Triton token"),
    ],
)
def test_bench_triton_takes_the_ca_and_the_token_file(
    bundle: Path, tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    result = zsad(
        "bench", "triton", "--out", str(tmp_path / "bench"), "--bundle", str(bundle),
        "--triton", "grpcs://127.0.0.1:1", "--triton-model", "zsad", "--clients", "1",
        "--seconds", "0.1", *(a.format(tmp=tmp_path) for a in args),
    )  # fmt: skip
    one_line_error(result, needle)
