"""Checksums as endpoints report them, raw (`IChecksumSource.reported_checksums`, `Stat.reported`),
turned into {algorithm: lowercase hex}. The endpoints only pass on what the storage said: the parsing
of each field lives here, beside the other checksum formats (`fedd.checksums.digest`).

| field                  | sent by                     | value                                   |
|------------------------|-----------------------------|-----------------------------------------|
| `digest`               | dCache, EOS, StoRM, fedd    | RFC 3230 `Digest` (`adler32=..., md5=<base64>`) |
| `x-amz-meta-<alg>`     | S3 (dynafed-storagestats, fedd) | hex, adler32 possibly without leading zeros |
| `etag`                 | S3                          | the MD5 of an object uploaded in one part |
| `content-md5`          | Azure Blob                  | base64 of the 16 MD5 bytes              |
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from fedd.checksums.digest import ALGORITHMS, from_base64, md5_from_etag, normalise, parse_digest
from fedd.endpoints.base import Stat

_AMZ_META = "x-amz-meta-"


def parse_reported(reported: Iterable[tuple[str, str]]) -> dict[str, str]:
    """{algorithm: hex} from (field, raw value) pairs; fields and values it cannot read are left out.
    A value given by a checksum field wins over the ETag's MD5."""
    out: dict[str, str] = {}
    etag_md5: str | None = None
    for field, raw in reported:
        name = field.lower()
        if name == "digest":
            for algorithm, value in parse_digest(raw).items():
                out.setdefault(algorithm, value)
        elif name.startswith(_AMZ_META) and name[len(_AMZ_META) :] in ALGORITHMS:
            hex_value = normalise(name[len(_AMZ_META) :], raw)
            if hex_value is not None:
                out.setdefault(name[len(_AMZ_META) :], hex_value)
        elif name == "content-md5":
            md5 = from_base64("md5", raw) or normalise("md5", raw)
            if md5 is not None:
                out.setdefault("md5", md5)
        elif name == "etag":
            etag_md5 = md5_from_etag(raw)
    if etag_md5 is not None:
        out.setdefault("md5", etag_md5)
    return out


def known_checksums(stat: Stat) -> dict[str, str]:
    """{algorithm: hex} a stat carries: the values already known for it, then what its endpoint reported."""
    out = dict(stat.checksums)
    for algorithm, value in _parsed(stat.reported):
        out.setdefault(algorithm, value)
    return out


@lru_cache(maxsize=8192)  # a popular file's stat is read on every checksum HEAD and metalink: ~5 us -> ~1 us
def _parsed(reported: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple(parse_reported(reported).items())


def worth_storing(values: dict[str, str], etag: str) -> dict[str, str]:
    """The computed values an S3 object's metadata should get: not an MD5 its one-part ETag already is."""
    return {a: v for a, v in values.items() if a != "md5" or md5_from_etag(etag) is None}
