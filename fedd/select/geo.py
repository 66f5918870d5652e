"""Client address -> (lat, lon): configured site ranges first, then a GeoIP2/GeoLite2 City database.

Answers are cached per address, so the database is read once per client, not once per request.
Private, loopback and link-local addresses have no public location: only site ranges place them.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from twisted.logger import Logger

from fedd.config import SiteRange

log = Logger(namespace="fedd.geo")


def builtin_database() -> str | None:
    """The GeoLite2 City database shipped by the `maxminddb-geolite2` package (2018), if installed."""
    try:
        from geolite2 import geolite2_database
    except ImportError:
        return None
    return str(geolite2_database())


class GeoLocator:
    def __init__(self, database: str = "", sites: Sequence[SiteRange] = (), cache_entries: int = 65536) -> None:
        self._sites = sorted(sites, key=lambda s: -s.network.prefixlen)
        self._cache: OrderedDict[str, tuple[float, float] | None] = OrderedDict()
        self._cache_entries = cache_entries
        self._countries: OrderedDict[str, str | None] = OrderedDict()
        self._reader: Any = None
        self.database = database
        if database == "builtin":
            self.database = builtin_database() or ""
            if not self.database:
                raise ValueError("geo database 'builtin' needs the maxminddb-geolite2 package")
        if self.database:
            import geoip2.database
            import maxminddb

            self._reader = geoip2.database.Reader(self.database, mode=maxminddb.MODE_MMAP)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def locate(self, address: str) -> tuple[float, float] | None:
        try:
            return self._cache[address]
        except KeyError:
            pass
        value = self._lookup(address)
        self._cache[address] = value
        if len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)
        return value

    def country(self, address: str) -> str | None:
        """ISO country code of a public address from the database (for events), cached; None if unknown."""
        try:
            return self._countries[address]
        except KeyError:
            pass
        code = None
        if self._reader is not None:
            try:
                code = self._reader.city(address.split("%", 1)[0]).country.iso_code
            except Exception:  # not found, not an address, damaged database: no country
                code = None
        self._countries[address] = code
        if len(self._countries) > self._cache_entries:
            self._countries.popitem(last=False)
        return code

    def _lookup(self, address: str) -> tuple[float, float] | None:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for site in self._sites:
            if ip.version == site.network.version and ip in site.network:
                return (site.lat, site.lon)
        if self._reader is None or not ip.is_global:
            return None
        try:
            location = self._reader.city(str(ip)).location
        except Exception:  # AddressNotFoundError, or a damaged database: no geo term, never a failure
            return None
        if location.latitude is None or location.longitude is None:
            return None
        return (float(location.latitude), float(location.longitude))
