"""STOMP brokers: where to connect (`stomp[+ssl]://` URLs with fail-over order) and how to check
them over TLS (the `ca_file` bundle, the system's CAs, a client certificate)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from OpenSSL import SSL, crypto
from twisted.internet.error import VerifyError
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.python import usage

from fedd.errors import describe
from fedd.pem import read_certificates


@dataclass(frozen=True)
class StompBroker:
    host: str
    port: int
    tls: bool
    vhost: str  # the `host` header: RabbitMQ's virtual host; ActiveMQ ignores it
    login: str = field(default="", repr=False)
    passcode: str = field(default="", repr=False)

    def describe(self) -> str:
        return f"{'stomp+ssl' if self.tls else 'stomp'}://{self.host}:{self.port}"


def parse_brokers(text: str, login: str = "", passcode: str = "") -> tuple[StompBroker, ...]:
    """`stomp://[user:pass@]host:port[/vhost]` URLs separated by commas or spaces; a URL's own
    credentials win over `login`/`passcode`. The config parser has checked the URLs."""
    brokers = []
    for url in text.replace(",", " ").split():
        parts = urlsplit(url)
        tls = parts.scheme == "stomp+ssl"
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        user = unquote(parts.username) if parts.username else login
        password = unquote(parts.password) if parts.password is not None else passcode
        host = parts.hostname or ""
        brokers.append(StompBroker(host, parts.port or (61614 if tls else 61613), tls, vhost, user, password))
    return tuple(brokers)


def stomp_tls(ca_file: str, certificate: str, private_key: str) -> Callable[[StompBroker], Any]:
    """TLS options per broker: its certificate checked against `ca_file` (or the system's CAs) and
    its host name; a client certificate (the grid host certificate, as Hermes uses) when given.
    Files are read here, at start-up: a bad file is a usage error naming it before the daemon runs.
    `ca_file` may hold several CA certificates (a bundle): each one is trusted."""
    trust = trustRootFromCertificates(load_ca_file(ca_file)) if ca_file else platformTrust()
    client = None
    if certificate:
        try:
            client = PrivateCertificate.loadPEM(Path(certificate).read_bytes() + b"\n" + Path(private_key).read_bytes())
        except (OSError, ValueError, SSL.Error, crypto.Error, VerifyError) as exc:
            raise usage.UsageError(
                f"[events] tls_certificate {certificate} / tls_private_key {private_key}: {describe(exc)}"
            ) from None

    def options(broker: StompBroker) -> Any:
        return optionsForClientTLS(broker.host, trustRoot=trust, clientCertificate=client)

    return options


def load_ca_file(path: str) -> list[Certificate]:
    """Every certificate of a PEM bundle (pyOpenSSL's loader reads only the first one)."""
    try:
        certs = read_certificates(path)
    except OSError as exc:
        raise usage.UsageError(f"[events] ca_file {path}: {describe(exc)}") from None
    except ValueError:  # cryptography's text is long and points at a FAQ
        raise usage.UsageError(f"[events] ca_file {path}: not PEM certificates (or a malformed one)") from None
    return [Certificate(c) for c in certs]
