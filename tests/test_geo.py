"""GeoIP lookups against a database built for the test with mmdb-writer, plus site ranges."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from fedd.config import SiteRange
from fedd.select.geo import GeoLocator, builtin_database


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("geo") / "test-city.mmdb"
    writer = MMDBWriter(ip_version=6, database_type="GeoIP2-City", languages=["en"], ipv4_compatible=True)
    writer.insert_network(IPSet(["128.141.0.0/16"]), {"location": {"latitude": 46.2, "longitude": 6.1}})
    writer.insert_network(IPSet(["131.225.0.0/16"]), {"location": {"latitude": 41.9, "longitude": -87.6}})
    writer.insert_network(IPSet(["2400:4000::/22"]), {"location": {"latitude": 35.7, "longitude": 139.7}})
    writer.to_db_file(str(path))
    return str(path)


def test_lookup_from_database(db: str) -> None:
    geo = GeoLocator(db)
    assert geo.locate("128.141.1.7") == (46.2, 6.1)
    assert geo.locate("131.225.1.1") == (41.9, -87.6)
    assert geo.locate("::ffff:128.141.2.9") == (46.2, 6.1)
    assert geo.locate("8.8.4.4") is None  # not in the database
    assert geo.locate("192.0.2.1") is None  # documentation range: not global
    assert geo.locate("garbage") is None
    geo.close()


def test_site_ranges_place_private_addresses(db: str) -> None:
    sites = [
        SiteRange(ipaddress.ip_network("10.1.0.0/16"), 50.0, 8.0),
        SiteRange(ipaddress.ip_network("10.0.0.0/8"), 1.0, 1.0),
        SiteRange(ipaddress.ip_network("127.0.0.0/8"), 46.2, 6.1),
    ]
    geo = GeoLocator("", sites)
    assert geo.locate("10.1.2.3") == (50.0, 8.0)  # most specific range wins
    assert geo.locate("10.9.9.9") == (1.0, 1.0)
    assert geo.locate("127.0.0.1") == (46.2, 6.1)
    assert geo.locate("192.168.1.1") is None
    assert geo.locate("fe80::1%eth0") is None


def test_builtin_geolite2_locates_a_public_address() -> None:
    path = builtin_database()
    assert path is not None and Path(path).exists()
    geo = GeoLocator("builtin")
    where = geo.locate("128.141.0.1")  # CERN's network in the 2018 GeoLite2
    assert where is not None and 40 < where[0] < 55 and -5 < where[1] < 15
    assert geo.locate("128.141.0.1") is where  # cached per address
    geo.close()


def test_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        GeoLocator(str(tmp_path / "nope.mmdb"))
