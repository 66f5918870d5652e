"""Checksum names, header parsing and formatting, streaming hashers. Pure: values in, values out.

Internally a checksum is `(algorithm, lowercase hex)` with algorithm one of ALGORITHMS. On the wire:

- RFC 3230 `Want-Digest: ADLER32;q=0.5, MD5` → `Digest: adler32=0a1b2c3d` (8 hex digits) or
  `md5=<base64 of the 16 bytes>`, `sha-256=<base64>`, `sha-512=<base64>`. Names are case-insensitive
  (gfal2 sends `ADLER32`), q defaults to 1, q=0 means "not this one".
- RFC 9530 `Want-Repr-Digest: sha-256=3, adler=1` (a structured-field dictionary of integer preferences
  0-10) → `Repr-Digest: sha-256=:<base64>:`. Only the IANA registry's names: `sha-256`, `sha-512`, `md5`
  and `adler` (the last two are deprecated there but still what grid storage keeps); `adler`'s value is
  the 4 bytes of the Adler-32 in network order as a byte sequence. `adler32` is *not* an RFC 9530 name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

try:  # zlib-ng's Adler-32 (SIMD) runs ~9x faster than the system zlib 1.2's here: same values
    from zlib_ng.zlib_ng import adler32 as _adler32

    ADLER32_IMPLEMENTATION = "zlib-ng"
except ImportError:  # pragma: no cover - the `fast` extra is not installed
    from zlib import adler32 as _adler32

    ADLER32_IMPLEMENTATION = "zlib"

ALGORITHMS = ("adler32", "md5", "sha256", "sha512")
HEX_LENGTH = {"adler32": 8, "md5": 32, "sha256": 64, "sha512": 128}

# wire name (lower case) -> internal name
DIGEST_NAMES = {"adler32": "adler32", "md5": "md5", "sha-256": "sha256", "sha-512": "sha512"}
REPR_DIGEST_NAMES = {"adler": "adler32", "md5": "md5", "sha-256": "sha256", "sha-512": "sha512"}
_DIGEST_OUT = {v: k for k, v in DIGEST_NAMES.items()}
_REPR_OUT = {v: k for k, v in REPR_DIGEST_NAMES.items()}
_HEX_RE = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class Want:
    """One request header's wishes: `field` is `digest` (RFC 3230) or `repr-digest` (RFC 9530);
    `algorithms` the acceptable internal names, most wanted first (ties in the client's order)."""

    field: str
    algorithms: tuple[str, ...]

    def pick(self, known: Mapping[str, str]) -> str | None:
        """The most wanted algorithm among those whose value is known."""
        for algorithm in self.algorithms:
            if algorithm in known:
                return algorithm
        return None

    @property
    def header(self) -> bytes:
        return b"digest" if self.field == "digest" else b"repr-digest"


def _ranked(items: list[tuple[str, float]]) -> tuple[str, ...]:
    seen: dict[str, float] = {}
    for name, weight in items:
        if name not in seen:  # the first mention of a name counts
            seen[name] = weight
    order = sorted((n for n, w in seen.items() if w > 0), key=lambda n: -seen[n])  # stable: ties keep order
    return tuple(order)


def parse_want_digest(text: str) -> Want:
    """RFC 3230 `Want-Digest`; unknown algorithms and malformed items are left out (never an error)."""
    items: list[tuple[str, float]] = []
    for part in text.split(","):
        name, *params = (p.strip() for p in part.split(";"))
        algorithm = DIGEST_NAMES.get(name.lower())
        if algorithm is None:
            continue
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = -1.0
                if not 0 <= weight <= 1:
                    weight = 0.0  # a malformed q: treat the item as not acceptable
        items.append((algorithm, weight))
    return Want("digest", _ranked(items))


def parse_want_repr_digest(text: str) -> Want:
    """RFC 9530 `Want-Repr-Digest` (an RFC 8941 dictionary of integers 0-10; 0: not acceptable)."""
    items: list[tuple[str, float]] = []
    for part in text.split(","):
        key, sep, value = part.partition("=")
        algorithm = REPR_DIGEST_NAMES.get(key.strip().lower())
        if algorithm is None:
            continue
        value = value.split(";", 1)[0].strip()
        if not sep:
            weight = 1.0  # a bare key is the boolean true: accept it as a plain "yes"
        elif re.fullmatch(r"[0-9]{1,15}", value) and int(value) <= 10:  # not isdigit: it takes '²' (\xb2)
            weight = float(value)
        else:
            continue
        items.append((algorithm, weight))
    return Want("repr-digest", _ranked(items))


def normalise(algorithm: str, value: str) -> str | None:
    """A checksum as lowercase hex of the right length, or None when `value` is not one.

    Adler-32 values lose their leading zeros in some tools (and `0x` prefixes appear): both are mended."""
    text = value.strip().lower()
    if algorithm == "adler32" and text.startswith("0x"):
        text = text[2:]
    want = HEX_LENGTH.get(algorithm)
    if want is None or not text or len(text) > want or not _HEX_RE.match(text):
        return None
    if len(text) < want:
        if algorithm != "adler32":
            return None
        text = text.zfill(want)
    return text


def from_base64(algorithm: str, value: str) -> str | None:
    """A base64 digest (RFC 3230 md5/sha-256) as hex, or None when it is not one of the right size."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) * 2 != HEX_LENGTH.get(algorithm, -1):
        return None
    return raw.hex()


def parse_digest(text: str) -> dict[str, str]:
    """A server's RFC 3230 `Digest` header (`adler32=0a1b2c3d, md5=<base64>`) as {algorithm: hex}."""
    out: dict[str, str] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        algorithm = DIGEST_NAMES.get(name.strip().lower())
        if not sep or algorithm is None or algorithm in out:
            continue
        if algorithm == "adler32":
            hex_value = normalise(algorithm, value)
        else:
            hex_value = from_base64(algorithm, value) or normalise(algorithm, value)  # some servers send hex
        if hex_value is not None:
            out[algorithm] = hex_value
    return out


def md5_from_etag(etag: str) -> str | None:
    """S3's ETag of an object uploaded in one part is its MD5 (32 hex); `<hex>-N` (multipart) is not."""
    text = etag.strip().strip('"').lower()
    return text if len(text) == 32 and _HEX_RE.match(text) else None


def format_value(field: str, algorithm: str, hex_value: str) -> bytes:
    """One `name=value` item for a `Digest` (field `digest`) or `Repr-Digest` (`repr-digest`) header."""
    raw = bytes.fromhex(hex_value)
    if field == "digest":
        if algorithm == "adler32":
            return f"adler32={hex_value}".encode()
        return f"{_DIGEST_OUT[algorithm]}={base64.b64encode(raw).decode()}".encode()
    return f"{_REPR_OUT[algorithm]}=:{base64.b64encode(raw).decode()}:".encode()


def parse_prefer_wait(text: str | None) -> float | None:
    """Seconds from RFC 7240 `Prefer: wait=N` (`respond-async` means 0); None when not said."""
    if not text:
        return None
    wait: float | None = None
    for part in text.split(","):
        token = part.split(";", 1)[0].strip()
        key, _, value = token.partition("=")
        key = key.strip().lower()
        if key == "respond-async":
            return 0.0
        if key == "wait":
            value = value.strip().strip('"')
            if value.isascii() and value.isdigit():  # str.isdigit alone takes '²', which float() refuses
                wait = float(value)
    return wait


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


class Adler32:
    """Adler-32 as a streaming hasher (initial value 1): zlib-ng's when installed, else zlib's."""

    # zlib-ng's runs at several GB/s: cheaper inline than handed to a thread (fedd.checksums.bulk)
    fast = ADLER32_IMPLEMENTATION == "zlib-ng"

    def __init__(self) -> None:
        self.value = 1

    def update(self, data: bytes, /) -> None:
        self.value = _adler32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value & 0xFFFFFFFF:08x}"


def new_hasher(algorithm: str) -> Hasher:
    if algorithm == "adler32":
        return Adler32()
    if algorithm in ("md5", "sha256", "sha512"):
        return hashlib.new(algorithm)
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def wants_of(want_digest: bytes | None, want_repr_digest: bytes | None) -> list[Want]:
    """The request's wishes with at least one algorithm fedd knows (unknown-only headers are ignored)."""
    out = []
    if want_digest is not None:
        out.append(parse_want_digest(want_digest.decode("latin-1")))
    if want_repr_digest is not None:
        out.append(parse_want_repr_digest(want_repr_digest.decode("latin-1")))
    return [w for w in out if w.algorithms]
