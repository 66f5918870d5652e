"""Where fedd listens: Twisted endpoint strings, and the server TLS context for `ssl:` listeners
(grid client-certificate verification when `[auth] ca_dir` is set)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.python import usage

from fedd.auth.tls import GridContextFactory
from fedd.config import Config
from fedd.pem import read_certificates


def tls_options(config: Config) -> ssl.CertificateOptions:
    """Server TLS context from the configured PEM files (errors name the file)."""
    server = config.server
    if not server.tls_certificate or not server.tls_private_key:
        raise usage.UsageError("an ssl: listener needs tls_certificate and tls_private_key in [server]")
    try:
        cert = crypto.load_certificate(crypto.FILETYPE_PEM, Path(server.tls_certificate).read_bytes())
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, Path(server.tls_private_key).read_bytes())
        chain = read_certificates(server.tls_chain) if server.tls_chain else []
    except (OSError, ValueError, crypto.Error) as exc:
        raise usage.UsageError(f"cannot load the TLS certificate or key: {exc}") from None
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=cert,
        extraCertChain=chain,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def server_tls(config: Config) -> Any:
    """The TLS context for ssl: listeners: grid client-certificate verification when [auth] ca_dir is set."""
    auth = config.auth
    if auth is None or not auth.ca_dir:
        return tls_options(config)
    if not config.server.tls_certificate or not config.server.tls_private_key:
        raise usage.UsageError("an ssl: listener needs tls_certificate and tls_private_key in [server]")
    try:
        return GridContextFactory(
            certificate=config.server.tls_certificate,
            private_key=config.server.tls_private_key,
            chain=config.server.tls_chain,
            ca_dir=auth.ca_dir,
            require=auth.client_certificates == "required",
            crl=auth.crl,
            verify_depth=auth.verify_depth,
        )
    except (OSError, SSL.Error, crypto.Error) as exc:
        raise usage.UsageError(f"cannot set up TLS with client certificates: {exc}") from None


def listen_endpoint(reactor: Any, description: str, config: Config, tls: Any = None) -> Any:
    """`tcp:...` strings go to Twisted; `ssl:PORT[:interface=ADDR]` uses the configured certificate."""
    if description.startswith("ssl:") and "privateKey=" not in description:
        parts = description.split(":")
        kwargs: dict[str, str] = {}
        for part in parts[2:]:
            key, _, value = part.partition("=")
            if key not in ("interface", "backlog"):
                raise usage.UsageError(f"listen {description!r}: unknown option {key!r}")
            kwargs[key] = value
        try:
            port = int(parts[1])
        except (IndexError, ValueError):
            raise usage.UsageError(f"listen {description!r}: expected ssl:PORT[:interface=ADDR]") from None
        return SSL4ServerEndpoint(
            reactor,
            port,
            tls if tls is not None else tls_options(config),
            interface=kwargs.get("interface", ""),
            backlog=int(kwargs.get("backlog", "128")),
        )
    try:
        return serverFromString(reactor, description)
    except IndexError:
        raise usage.UsageError(f"listen {description!r}: no such inherited socket (not started by systemd?)") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise usage.UsageError(f"listen {description!r}: {exc}") from None
