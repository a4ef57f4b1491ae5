"""The Triton backend: the encoder runs on a Triton Inference Server (gRPC, or HTTP; either over
TLS), here only the request. On connect the served model's config must carry a zsad bundle's
metadata whose input, outputs and file hash match what the server declares (and an expected
bundle, if given). Those come from the server: the check catches a wrong model or a stale
repository, not a server that lies."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from zsad.errors import ServiceUnavailable, ZsadError, echo_stderr
from zsad.formats.bundle import Bundle
from zsad.formats.triton import PARAM_BUNDLE, PARAM_CALIBRATION, PARAM_FILE
from zsad.formats.urls import split_url
from zsad.runtime.backend import Lifecycle, checked_pixels

DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
TLS_SCHEMES = {"grpcs": "grpc", "https": "http"}
TOKEN_ENV = "ZSAD_TRITON_TOKEN"
DEFAULT_TIMEOUT_S = 30.0
# gRPC status codes and connection failures that mean "the server is not there (yet)".
_OUTAGE_MARKS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "Deadline", "failed to connect", "onnect")


def parse_url(url: str) -> tuple[str, str]:
    """'grpc[s]://host:8001', 'http[s]://host:8000' or 'host[:port]' (gRPC) -> (scheme,
    host:port)."""
    parts = split_url(
        url if "://" in url else f"grpc://{url}",
        "--triton",
        f"give a token in --triton-token-file FILE or ${TOKEN_ENV}",
    )
    protocol = TLS_SCHEMES.get(parts.scheme, parts.scheme)
    if protocol not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        raise ZsadError(
            f"--triton {url}: expected grpc://HOST:PORT or http://HOST:PORT (grpcs:// or "
            "https:// for TLS)"
        )
    try:
        port = parts.port or DEFAULT_PORTS[protocol]
    except ValueError as exc:
        raise ZsadError(f"--triton {url}: bad port ({exc})") from exc
    return parts.scheme, f"{parts.hostname}:{port}"


def client_options(
    scheme: str, ca_file: Path | None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> dict[str, Any]:
    """The keyword arguments of tritonclient's InferenceServerClient for ``scheme``."""
    protocol = TLS_SCHEMES.get(scheme, scheme)
    tls = scheme in TLS_SCHEMES
    if ca_file is not None:
        if not tls:
            raise ZsadError(f"--triton-ca {ca_file}: only for grpcs:// or https:// servers")
        try:  # here, so that a missing file is one line naming the flag, not the client's trace
            ca_file.read_bytes()
        except OSError as exc:
            reason = exc.strerror or exc
            raise ZsadError(f"--triton-ca {ca_file}: cannot read it ({reason})") from exc
    if protocol == "grpc":
        if not tls:
            return {}
        return {"ssl": True, "root_certificates": None if ca_file is None else str(ca_file)}
    options: dict[str, Any] = {"connection_timeout": timeout_s, "network_timeout": timeout_s}
    if not tls:
        return options
    import gevent.ssl

    # A context from create_default_context checks the certificate and the host name whatever
    # geventhttpclient's own defaults are; ca_certs replaces the system's CAs with the file's.
    options.update(ssl=True, ssl_context_factory=gevent.ssl.create_default_context)
    if ca_file is not None:
        options["ssl_options"] = {"ca_certs": str(ca_file)}
    return options


@functools.cache
def _warn_cleartext_token(url: str) -> None:
    # Cached: a station reconnects with the same settings; one warning is enough.
    echo_stderr(
        f"zsad: warning: --triton {url}: the access token is sent unencrypted; use grpcs:// or "
        "https://"
    )


def _client_module(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as exc:
        raise ZsadError(
            f"--triton: the Triton client is not installed ({exc.name} is missing): "
            "pip install 'zsad[triton]'"
        ) from exc
    return module


def _is_outage(exc: Exception, marks: tuple[str, ...] = _OUTAGE_MARKS) -> bool:
    text = f"{getattr(exc, 'status', lambda: '')()} {exc}"
    return any(mark in text for mark in marks) or isinstance(exc, (OSError, TimeoutError))


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


class TritonBackend(Lifecycle):
    """Encodes on a Triton server; implements zsad.runtime.backend.EncoderBackend.

    Not thread-safe (neither is the Triton client): give each thread its own backend.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        expect: Bundle | None = None,
        ca_file: Path | None = None,
        token: str | None = None,
    ) -> None:
        self.scheme, self.address = parse_url(url)
        self.protocol = TLS_SCHEMES.get(self.scheme, self.scheme)
        self.url, self.model, self.timeout_s = url, model, timeout_s
        self.where = f"--triton {url} --triton-model {model}"
        self.name = f"triton-{self.scheme}:{model}"
        options = client_options(self.scheme, ca_file, timeout_s)
        if token and self.scheme not in TLS_SCHEMES:
            _warn_cleartext_token(url)
        # gRPC metadata keys must be lower case; HTTP header names are case-insensitive.
        self._headers = {"authorization": f"Bearer {token}"} if token else None
        module = _client_module(self.protocol)
        self._module = module
        self.client = module.InferenceServerClient(self.address, **options)
        try:
            self._open(expect)
        except Exception:
            self.close()  # a station retrying at start must not pile up connections
            raise

    def _open(self, expect: Bundle | None) -> None:
        config = self._connect()
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        if PARAM_BUNDLE not in params:
            raise ZsadError(
                f"{self.where}: this model carries no zsad bundle metadata (not a "
                "model from zsad triton)"
            )
        try:
            meta = json.loads(params[PARAM_BUNDLE])
        except ValueError as exc:
            raise ZsadError(f"{self.where}: unreadable bundle metadata ({exc})") from exc
        # The "root" names the served model in messages: HOST:PORT/MODEL.
        self.bundle = Bundle.from_meta(Path(self.address) / self.model, meta, self.where)
        self.served_file = params.get(PARAM_FILE, "")
        self.calibration = params.get(PARAM_CALIBRATION)  # base64, HeadCLIP only
        self._check(config, expect)
        self.max_batch = int(config.get("max_batch_size", 0))  # 0: the model does not batch
        self.image_size = self.bundle.image_size
        self.mean, self.std = self.bundle.mean, self.bundle.std
        self.outputs = self.bundle.outputs
        self.input_name = str(meta["input"]["name"])

    def _call(
        self,
        what: str,
        function: Any,
        *args: Any,
        marks: tuple[str, ...] = _OUTAGE_MARKS,
        **kwargs: Any,
    ) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as exc:  # the client raises its own type, gRPC and socket errors
            if _is_outage(exc, marks):
                raise ServiceUnavailable(
                    f"{self.where}: {what}: server unreachable or too slow ({_short(exc)})"
                ) from exc
            raise ZsadError(f"{self.where}: {what}: {_short(exc)}") from exc

    def _connect(self) -> dict[str, Any]:
        """Check the server is up and the model ready; returns the model's config."""
        per_call = self._request_options()
        self._call("connect", self.client.is_server_live, **per_call)
        if not self._call("model status", self.client.is_model_ready, self.model, **per_call):
            if self.protocol == "grpc":
                index = self._call(
                    "repository", self.client.get_model_repository_index, as_json=True, **per_call
                ).get("models", [])
            else:
                index = self._call("repository", self.client.get_model_repository_index, **per_call)
            ready = sorted(m.get("name", "") for m in index if m.get("state") == "READY")
            raise ZsadError(
                f"{self.where}: no such model ready on the server (ready: "
                f"{', '.join(ready) or 'none'})"
            )
        if self.protocol == "grpc":
            config = self._call(
                "config", self.client.get_model_config, self.model, as_json=True, **per_call
            )
            return config.get("config", {})
        return self._call("config", self.client.get_model_config, self.model, **per_call)

    def _request_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"headers": self._headers}
        if self.protocol == "grpc":  # the HTTP client's timeouts are set on the client
            options["client_timeout"] = self.timeout_s
        return options

    def _check(self, config: dict[str, Any], expect: Bundle | None) -> None:
        bundle = self.bundle
        inputs = config.get("input", [])
        size = bundle.image_size
        if len(inputs) != 1 or [int(d) for d in inputs[0].get("dims", [])] != [3, size, size]:
            raise ZsadError(
                f"{self.where}: the served input is not one (B, 3, {size}, {size}) image batch "
                "as the bundle metadata says"
            )
        served = sorted(o.get("name") for o in config.get("output", []))
        if served != sorted(bundle.outputs):
            raise ZsadError(
                f"{self.where}: serves outputs {', '.join(served)}, not the encoder outputs "
                f"{', '.join(bundle.outputs)} (a HeadCLIP ensemble? give its encoder model)"
            )
        entry = bundle.meta.get("files", {}).get(self.served_file)
        if entry is None:
            raise ZsadError(f"{self.where}: serves {self.served_file!r}, not a file of its bundle")
        if expect is not None:
            wanted = expect.meta["files"].get(self.served_file, {}).get("sha256")
            if wanted != entry["sha256"]:
                raise ZsadError(
                    f"{self.where}: serves a different {self.served_file} than --bundle "
                    f"{expect.root} (SHA-256 {entry['sha256'][:12]} vs {str(wanted)[:12]})"
                )

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Encode a float32 batch (B, 3, S, S) on the server."""
        pixels = checked_pixels(pixels, self.image_size, "this model")
        if self.client is None:
            raise ZsadError(f"{self.name}: the backend was closed")
        if 0 < self.max_batch < len(pixels):  # the server refuses larger batches: split them
            parts = [
                self.run(pixels[i : i + self.max_batch])
                for i in range(0, len(pixels), self.max_batch)
            ]
            return {name: np.concatenate([p[name] for p in parts]) for name in self.outputs}
        module = self._module
        request = module.InferInput(self.input_name, list(pixels.shape), "FP32")
        request.set_data_from_numpy(pixels)
        wanted = [module.InferRequestedOutput(name) for name in self.outputs]
        per_call = self._request_options()
        # The model was there on connect: gone now means unloaded for a reload, so wait for it.
        result = self._call(
            "inference",
            self.client.infer,
            self.model,
            [request],
            outputs=wanted,
            marks=(*_OUTAGE_MARKS, "NOT_FOUND", "not found", "not ready"),
            **per_call,
        )
        return {name: np.asarray(result.as_numpy(name), np.float32) for name in self.outputs}

    def close(self) -> None:
        """Close the connection."""
        if self.client is not None:
            self.client.close()
            self.client = None
