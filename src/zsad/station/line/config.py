"""How a station reaches the line: the settings of each sink, checked before anything starts.

Secrets never come from the command line: the MQTT password and the HTTP token are read from an
environment variable or a file, and URLs with credentials in them are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from zsad.errors import ZsadError
from zsad.formats.urls import read_secret, split_url
from zsad.station.line.certificates import server_credentials, trusted_certificates

MQTT_PASSWORD_ENV = "ZSAD_MQTT_PASSWORD"
HTTP_TOKEN_ENV = "ZSAD_HTTP_TOKEN"
OpcuaSecurity = Literal["none", "sign", "sign-and-encrypt"]
MQTT_CREDENTIALS = (
    "give the user name with --mqtt-username and the password in --mqtt-password-file FILE or "
    f"${MQTT_PASSWORD_ENV}"
)
HTTP_CREDENTIALS = f"give the token in --http-token-file FILE or ${HTTP_TOKEN_ENV}"


def host_port(address: str, default_port: int, flag: str, instead: str) -> tuple[str, int]:
    """``host:port`` (or a bare host) as a pair; IPv6 hosts in brackets."""
    parts = split_url(f"//{address}", flag, instead)
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise ZsadError(f"{flag} {address}: bad port ({exc})") from exc
    if not parts.hostname:
        raise ZsadError(f"{flag} {address}: give HOST:PORT, e.g. 127.0.0.1:{default_port}")
    return parts.hostname, port


@dataclass(frozen=True)
class MqttConfig:
    """Publish every journal record to ``topic``/results (QoS 1) and a retained status."""

    url: str
    topic: str
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    client_id: str | None = None

    def endpoint(self) -> tuple[str, int, bool]:
        """(host, port, TLS) from mqtt://host:1883 or mqtts://host:8883."""
        parts = split_url(self.url, "--mqtt", MQTT_CREDENTIALS)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ZsadError(f"--mqtt {self.url}: give mqtt://HOST:PORT or mqtts://HOST:PORT")
        tls = parts.scheme == "mqtts" or self.ca_file is not None
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ZsadError(f"--mqtt {self.url}: bad port ({exc})") from exc
        return parts.hostname, port, tls

    def password(self) -> str | None:
        """The broker password, from --mqtt-password-file or $ZSAD_MQTT_PASSWORD."""
        return read_secret(MQTT_PASSWORD_ENV, self.password_file, "MQTT password")

    def check(self) -> None:
        """Refuse bad settings before the station starts."""
        self.endpoint()
        if not self.topic or any(c in self.topic for c in "#+") or self.topic.endswith("/"):
            raise ZsadError(
                f"--mqtt-topic {self.topic!r}: give a topic prefix without wildcards or a "
                "trailing '/', e.g. plant/line1/station1"
            )
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ZsadError(f"--mqtt-ca {self.ca_file}: no such file")
        self.password()


@dataclass(frozen=True)
class OpcuaConfig:
    """Serve the station object over OPC UA at ``url``."""

    url: str
    security: OpcuaSecurity = "sign-and-encrypt"
    certificate: Path | None = None
    private_key: Path | None = None
    trusted: Path | None = None  # folder of the client certificates admitted (default: any)

    def endpoint(self) -> tuple[str, int]:
        """(host, port) to listen on: exactly the host in the URL."""
        parts = split_url(
            self.url,
            "--opcua",
            "OPC UA clients are admitted by certificate (--opcua-trust DIR), not by password",
        )
        try:
            port = parts.port or 4840
        except ValueError as exc:
            raise ZsadError(f"--opcua {self.url}: bad port ({exc})") from exc
        if parts.scheme != "opc.tcp" or not parts.hostname:
            raise ZsadError(f"--opcua {self.url}: give opc.tcp://HOST:PORT")
        return parts.hostname, port

    def check(self) -> None:
        """Refuse bad settings before the station starts."""
        self.endpoint()
        if self.security == "none":
            if self.certificate or self.private_key or self.trusted:
                raise ZsadError(
                    "--opcua-cert/--opcua-key/--opcua-trust: only with --opcua-security sign or "
                    "sign-and-encrypt (--opcua-security none serves without certificates)"
                )
            return
        files = (("--opcua-cert", self.certificate), ("--opcua-key", self.private_key))
        for flag, path in files:
            if path is None:
                raise ZsadError(
                    f"--opcua-security {self.security} needs {flag} (see docs/line.md for "
                    "how to make a certificate); --opcua-security none serves without "
                    "security, to anonymous clients"
                )
            if not path.is_file():
                raise ZsadError(f"{flag} {path}: no such file")
        server_credentials(self.certificate, self.private_key)
        if self.trusted is not None:
            trusted_certificates(self.trusted)


@dataclass(frozen=True)
class HttpConfig:
    """Serve the HTTP API and the operator page at ``address`` (HOST:PORT)."""

    address: str = "127.0.0.1:8080"
    token_file: Path | None = None
    allow_hosts: tuple[str, ...] = ()  # Host names taken beside the bound address and localhost

    def bind(self) -> tuple[str, int]:
        """(host, port) to listen on."""
        return host_port(self.address, 8080, "--http", HTTP_CREDENTIALS)

    def check_hosts(self) -> None:
        """Refuse an --http-allow-host that is not a bare host name or address."""
        for name in self.allow_hosts:
            bare = name.strip("[]")
            if (
                not bare
                or any(c in bare for c in "/@?# ")
                or (":" in bare and "[" not in name and bare.count(":") == 1)
            ):
                raise ZsadError(
                    f"--http-allow-host {name!r}: give a host name or address without a port"
                )

    def token(self) -> str | None:
        """The token that state changes need, from --http-token-file or $ZSAD_HTTP_TOKEN."""
        return read_secret(HTTP_TOKEN_ENV, self.token_file, "HTTP token")

    def check(self) -> None:
        """Refuse bad settings before the station starts."""
        self.bind()
        self.token()
        self.check_hosts()


@dataclass(frozen=True)
class LineConfig:
    """The sinks a station runs (each None when not asked for)."""

    mqtt: MqttConfig | None = None
    opcua: OpcuaConfig | None = None
    http: HttpConfig | None = None

    def check(self) -> None:
        """Refuse bad settings of any sink before the station starts."""
        for config in (self.mqtt, self.opcua, self.http):
            if config is not None:
                config.check()
