"""WLCG JWT bearer tokens: signature (RS256/ES256 only) against the issuer's JWKS, iss/aud/exp/nbf.

Keys come from the issuer's JWKS URL (fetched without blocking, cached, refetched when a token names
an unknown `kid`, at most once per `min_refresh` seconds) or from an offline JWKS file.
`alg: none`, HS256 and every other algorithm are refused before any key is looked at.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jwt
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.logger import Logger

from fedd.auth.identity import Identity
from fedd.config import IssuerSettings as IssuerConfig
from fedd.errors import describe

log = Logger(namespace="fedd.auth.tokens")
ALGORITHMS = ("RS256", "ES256")
ANY_AUDIENCE = "https://wlcg.cern.ch/jwt/v1/any"
LEEWAY = 60  # seconds of clock skew allowed on exp/nbf/iat


class TokenError(Exception):
    """A token that is not acceptable; the message is safe to show and to log."""


def _keys_from_jwks(data: bytes) -> dict[str, Any]:
    doc = json.loads(data)
    keys: dict[str, Any] = {}
    for jwk in doc.get("keys", []):
        kid = jwk.get("kid", "")
        kty = jwk.get("kty")
        try:
            if kty == "RSA":
                keys[kid] = RSAAlgorithm.from_jwk(json.dumps(jwk))
            elif kty == "EC":
                keys[kid] = ECAlgorithm.from_jwk(json.dumps(jwk))
        except (ValueError, KeyError, TypeError, jwt.exceptions.InvalidKeyError):
            continue  # one bad key does not spoil the others
    return keys


def _scoped(scope: str, base: str) -> str | None:
    """Make a storage scope's path absolute under the issuer's base path; None if it is malformed."""
    name, sep, path = scope.partition(":")
    if not sep or not name.startswith("storage."):
        return scope
    if not path.startswith("/") or any(s in (".", "..") for s in path.split("/")):
        return None
    parts = [s for s in (base.rstrip("/") + path).split("/") if s]
    return f"{name}:/{'/'.join(parts)}"


class TokenVerifier:
    def __init__(
        self,
        issuers: list[IssuerConfig],
        audiences: list[str],
        *,
        clock: Any,
        fetch: Callable[[str], Deferred[bytes]],
        min_refresh: float = 60.0,
    ) -> None:
        self.issuers: Mapping[str, IssuerConfig] = {i.issuer.rstrip("/"): i for i in issuers}
        self.audiences = [*list(audiences), ANY_AUDIENCE]
        self.clock = clock
        self.fetch = fetch
        self.min_refresh = min_refresh
        self._keys: dict[str, dict[str, Any]] = {}
        self._fetched_at: dict[str, float] = {}
        for issuer in issuers:
            if issuer.jwks_file:
                self._keys[issuer.issuer.rstrip("/")] = _keys_from_jwks(Path(issuer.jwks_file).read_bytes())

    def verify(self, token: str) -> Deferred[Identity]:
        return ensureDeferred(self._verify(token))

    async def _verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.exceptions.PyJWTError:
            raise TokenError("malformed token") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise TokenError(f"token algorithm {alg!r} is not accepted (only {', '.join(ALGORITHMS)})")
        iss = str(unverified.get("iss", "")).rstrip("/")
        issuer = self.issuers.get(iss)
        if issuer is None:
            raise TokenError(f"token issuer {iss!r} is not trusted")
        key = await self._key(issuer, str(header.get("kid", "")))
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self.audiences,
                issuer=unverified.get("iss"),
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "sub"]},
            )
        except jwt.exceptions.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.exceptions.ImmatureSignatureError:
            raise TokenError("token not valid yet") from None
        except jwt.exceptions.InvalidAudienceError:
            raise TokenError("token audience does not include this service") from None
        except jwt.exceptions.InvalidSignatureError:
            raise TokenError("token signature does not verify") from None
        except jwt.exceptions.PyJWTError as exc:
            raise TokenError(f"token refused: {exc}") from None
        scopes = []
        storage_scoped = False
        for scope in str(claims.get("scope", "")).split():
            storage_scoped = storage_scoped or scope.startswith("storage.")
            absolute = _scoped(scope, issuer.base_path)
            if absolute is None:
                log.warn("token of {sub} has a malformed scope {scope!r}: ignored", sub=claims.get("sub"), scope=scope)
                continue
            scopes.append(absolute)
        groups = claims.get("wlcg.groups") or []
        if not isinstance(groups, list):
            groups = []
        return Identity(
            kind="token",
            subject=str(claims["sub"]),
            issuer=iss,
            groups=tuple(str(g) for g in groups),
            scopes=tuple(scopes),
            storage_scoped=storage_scoped,
            expires=float(claims["exp"]),
        )

    async def _key(self, issuer: IssuerConfig, kid: str) -> Any:
        iss = issuer.issuer.rstrip("/")
        keys = self._keys.get(iss, {})
        key = keys.get(kid) if kid else (next(iter(keys.values())) if len(keys) == 1 else None)
        if key is not None:
            return key
        now = self.clock.seconds()
        if issuer.jwks_url and now - self._fetched_at.get(iss, -1e18) >= self.min_refresh:
            self._fetched_at[iss] = now
            try:
                data = await self.fetch(issuer.jwks_url)
                self._keys[iss] = keys = _keys_from_jwks(data)
                log.info("fetched {n} key(s) of issuer {issuer}", n=len(keys), issuer=iss)
            except Exception as exc:
                log.warn("cannot fetch the keys of issuer {issuer}: {reason}", issuer=iss, reason=describe(exc))
            key = keys.get(kid) if kid else (next(iter(keys.values())) if len(keys) == 1 else None)
        if key is None:
            raise TokenError(f"token signed with an unknown key {kid!r} of issuer {iss}")
        return key


def no_fetch(url: str) -> Deferred[bytes]:
    return succeed(b'{"keys": []}')
