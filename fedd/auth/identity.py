"""The identity of a request, as the later parts (authorisation, events) see it."""

from __future__ import annotations

from dataclasses import dataclass

ANONYMOUS_KIND = "anonymous"


@dataclass(frozen=True)
class Identity:
    kind: str = ANONYMOUS_KIND  # "x509", "token" or "anonymous"
    subject: str = ""  # certificate DN (grid "/DC=../CN=.." form) or token `sub`
    issuer: str = ""  # CA DN or token `iss`
    fqans: tuple[str, ...] = ()  # VOMS FQANs, first is the primary
    groups: tuple[str, ...] = ()  # token wlcg.groups
    scopes: tuple[str, ...] = ()  # token scopes
    user: str = ""  # local account from the grid-mapfile
    limited_proxy: bool = False
    storage_scoped: bool = False  # a token that had storage.* scopes (even only malformed ones)
    expires: float | None = None  # a token's exp

    @property
    def anonymous(self) -> bool:
        return self.kind == ANONYMOUS_KIND

    @property
    def vos(self) -> tuple[str, ...]:
        """VO names from FQANs (`/atlas/Role=x` -> `atlas`)."""
        return tuple(dict.fromkeys(f.split("/")[1] for f in self.fqans if f.count("/") >= 1 and len(f) > 1))

    def label(self) -> str:
        return self.subject or "anonymous"


ANONYMOUS = Identity()
