"""Configuration parsing: values, defaults, every error with file:line, includes, secrets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedd.config import ConfigError, parse_config, values
from fedd.config.endpoints import COMMON, KINDS, field_of, kinds_taking
from fedd.config.schema import SECTION_TYPES, SECTIONS
from fedd.config.values import ENDPOINT_KINDS, in_range

GOOD = """
[server]
listen = tcp:8080:interface=127.0.0.1
listen = ssl:8443

[locate]
wait_budget = 1.5
memcached = 127.0.0.1:11211

[geo]
site = 10.0.0.0/8 46.2 6.1

[endpoint s3a]
kind = s3
url = http://127.0.0.1:7480/
bucket = atlas
access_key = AK
secret_key = SK
map = /atlas /rucio/atlas
lat = 46.2
lon = 6.1

[endpoint dav1]
kind = dav
url = https://dcache.example.org:2880/pnfs
map = /atlas /
map = /belle /belle
read = no
"""


def test_good_config_parses_with_defaults() -> None:
    config = parse_config(GOOD)
    assert config.server.listen == ("tcp:8080:interface=127.0.0.1", "ssl:8443")
    assert config.locate.wait_budget == 1.5
    assert config.locate.negative_ttl == 30.0
    assert config.locate.memcached == ("127.0.0.1:11211",)
    assert str(config.geo.sites[0].network) == "10.0.0.0/8"
    s3 = config.endpoint("s3a")
    assert s3.url == "http://127.0.0.1:7480"
    assert s3.mappings == (("/atlas", "/rucio/atlas"),)
    assert (s3.lat, s3.lon) == (46.2, 6.1)
    dav = config.endpoint("dav1")
    assert dav.mappings == (("/atlas", "/"), ("/belle", "/belle"))
    assert dav.read is False and dav.list is True and dav.write is False


def test_secrets_never_in_repr() -> None:
    config = parse_config(GOOD)
    assert "SK" not in repr(config)
    assert config.endpoint("s3a").secret_key == "SK"


def test_every_error_is_reported_with_line() -> None:
    text = """[server]
listen = carrier-pigeon:1
bogus = 1
[locate]
wait_budget = -3
[endpoint bad]
kind = ftp
[endpoint s3]
kind = s3
url = not-a-url
lat = 100
[nosuch]
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    errors = info.value.errors
    joined = "\n".join(errors)
    assert "<string>:2: listen" in joined
    assert "<string>:3: unknown key 'bogus'" in joined
    assert "<string>:5: wait_budget" in joined
    assert "<string>:7: kind: unknown endpoint kind 'ftp'" in joined
    assert "<string>:10: url" in joined
    assert "<string>:11: lat" in joined
    assert "<string>:12: unknown section [nosuch]" in joined
    assert "needs 'bucket'" in joined
    assert len(errors) >= 9


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[endpoint a]\nkind = dav\nurl = http://x\n[endpoint a]\nkind = dav\nurl = http://y\n", "already defined"),
        ("[endpoint a]\nkind = dav\nurl = http://x\nurl = http://y\n", "repeated"),
        ("kind = dav\n", "outside of any [section]"),
        ("[endpoint a]\nkind = dav\nurl = http://x\nmap = /a/../b /\n", "normalised path"),
        ("[endpoint a]\nkind = dav\nurl = http://x\nmap = /a\n", "<federation prefix> <endpoint prefix>"),
        ("[endpoint a]\nkind = dav\nurl = http://x\nlat = 1\n", "both lat and lon"),
        ("[endpoint a]\nkind = dav\nurl = http://x\nbucket = b\n", "only applies to kind s3"),
        ("[endpoint a b]\nkind = dav\n", "needs an id"),
        ("[endpoint a]\nkind = local\npath = /no/such/dir\n", "is not a directory"),
        ("[server]\nlisten = tcp:1\n", "no [endpoint"),
        ("[endpoint a]\nurl = http://x\n", "has no 'kind'"),
        ("[endpoint a]\nkind dav\n", "expected 'key = value'"),
        ("[endpoint a\n", "malformed section header"),
        ("[geo]\nsite = 10.0.0.0/8 46\n", "<network> <lat> <lon>"),
        ("[server]\ninclude = /no/such/file.conf\n", "no such file"),
        (
            "[endpoint a]\nkind = s3\nurl = http://x\nbucket = b\naccess_key = a\nsecret_key_env = FEDD_NOPE\n",
            "FEDD_NOPE is not set",
        ),
        (
            "[endpoint a]\nkind = s3\nurl = http://x\nbucket = b\naccess_key = a\nsecret_key = s\nsecret_key_env = X\n",
            "give only one of",
        ),
    ],
)
def test_bad_configs(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, environ={})
    assert message in str(info.value)


def test_include_directory_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "secret").write_text("s3cr3t\n")
    (tmp_path / "main.conf").write_text("[server]\ninclude = conf.d/*.conf\n")
    (tmp_path / "conf.d" / "10-local.conf").write_text("[endpoint l]\nkind = local\npath = ../data\n")
    (tmp_path / "conf.d" / "20-s3.conf").write_text(
        "[endpoint s]\nkind = s3\nurl = http://127.0.0.1:1\nbucket = b\naccess_key_env = AK\n"
        "secret_key_file = ../secret\n"
    )
    config = parse_config(path=str(tmp_path / "main.conf"), environ={"AK": "access"})
    assert [e.id for e in config.endpoints] == ["l", "s"]
    assert Path(config.endpoint("l").path).resolve() == (tmp_path / "data").resolve()
    assert config.endpoint("s").secret_key == "s3cr3t"
    assert config.endpoint("s").access_key == "access"
    assert len(config.files) == 3


def test_include_errors_name_the_included_file(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "main.conf").write_text("[server]\ninclude = conf.d/*.conf\n")
    (tmp_path / "conf.d" / "a.conf").write_text("[endpoint x]\nkind = dav\nurl = http://x\ncolour = red\n")
    with pytest.raises(ConfigError) as info:
        parse_config(path=str(tmp_path / "main.conf"))
    assert f"{tmp_path / 'conf.d' / 'a.conf'}:4: unknown key 'colour'" in str(info.value)


def test_include_loop_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("[server]\ninclude = a.conf\n[endpoint x]\nkind = dav\nurl = http://x\n")
    with pytest.raises(ConfigError, match="included twice"):
        parse_config(path=str(tmp_path / "a.conf"))


def test_binary_garbage_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bin.conf").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="cannot read"):
        parse_config(path=str(tmp_path / "bin.conf"))


def test_shipped_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent
    config = parse_config(path=str(root / "conf" / "fedd.conf"))
    assert config.endpoints[0].id == "local-data"


# --- per-kind endpoint keys (fedd/config/endpoints.py) -------------------------------------------

AZURE = "kind = azure\nurl = http://x\naccount = a\ncontainer = c\naccount_key = a2V5"


@pytest.mark.parametrize(
    ("section", "line", "error"),
    [
        ("kind = dav\nurl = http://x", "bucket = b", "'bucket' only applies to kind s3"),
        ("kind = dav\nurl = http://x", "presign_expiry = 60", "'presign_expiry' only applies to kind s3 or azure"),
        ("kind = local\npath = /", "url = http://x", "'url' only applies to kind s3 or dav or azure"),
        ("kind = local\npath = /", "quota = 1T", "'quota' only applies to kind s3 or dav or azure"),
        ("kind = local\npath = /", "verify_tls = no", "'verify_tls' only applies to kind s3 or dav or azure"),
        (AZURE, "tpc = yes", "'tpc' only applies to kind s3 or dav"),
        (AZURE, "health_path = /", "'health_path' only applies to kind dav"),
        ("kind = dav\nurl = http://x", "account_key_file = k", "'account_key_file' only applies to kind azure"),
        ("kind = dav\nurl = http://x", "path = /srv", "'path' only applies to kind local"),
    ],
)
def test_key_of_another_kind_is_an_error_at_its_line(section: str, line: str, error: str) -> None:
    """The error names the key's own file:line and the endpoint's kind, whatever order the keys come in."""
    kind = section.split("\n")[0].split(" = ")[1]
    after, before = f"[endpoint a]\n{section}\n{line}\n", f"[endpoint a]\n{line}\n{section}\n"
    for text, number in ((after, section.count("\n") + 3), (before, 2)):
        with pytest.raises(ConfigError) as info:
            parse_config(text, environ={})
        assert info.value.errors == [f"<string>:{number}: endpoint 'a' (kind {kind}): {error}"]


def test_every_key_of_another_kind_is_reported() -> None:
    text = "[endpoint a]\nkind = local\npath = /\nbucket = b\nregion = r\nurl = http://x\ntimeout = 3\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, environ={})
    assert [e.split(":")[1] for e in info.value.errors] == ["4", "5", "6"]


def test_kinds_and_keys_are_declared_once() -> None:
    """Every kind has its key declaration; every field of a section is a key (but an endpoint's or
    issuer's id and an endpoint's source); every endpoint key applies to some kind."""
    assert tuple(KINDS) == ENDPOINT_KINDS
    for name, cls in SECTION_TYPES.items():
        names = {f.name for f in dataclasses.fields(cls)}
        keyed = {key.attr for key in SECTIONS[name].values()}
        assert names - keyed == {"id", "source"} & names, name
    assert all(kinds_taking(field_of(key.attr)) for key in SECTIONS["endpoint"].values())


def _sample_values(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "ca.pem").write_text("")
    return {
        "kind": "",
        "url": "http://127.0.0.1:9/x",
        "path": str(tmp_path),
        "bucket": "b",
        "region": "eu",
        "access_key": "AK",
        "secret_key": "SK",
        "presign_expiry": "60",
        "map": "/a /b",
        "lat": "1.5",
        "lon": "2.5",
        "read": "yes",
        "list": "no",
        "write": "no",
        "timeout": "3",
        "weight": "2",
        "health_path": "/probe",
        "verify_tls": "no",
        "ca_file": "ca.pem",
        "account": "acc",
        "container": "cont",
        "account_key": "a2V5",
        "min_free": "1G",
        "quota": "2G",
        "space_source": "none",
        "share": "disk",
        "vo": "atlas",
        "downtime": "2026-12-01T08:00Z 2026-12-01T09:00Z write",
        "tpc": "yes",
        "gocdb_hostname": "se.example.org",
    }


def test_every_kind_takes_every_key_it_declares(tmp_path: Path) -> None:
    """Each kind's declared keys (fedd/config/endpoints.py) all parse together: the per-kind check
    refuses no key a kind's implementation reads."""
    samples = _sample_values(tmp_path)
    plain = [k for k, key in SECTIONS["endpoint"].items() if field_of(key.attr) == key.attr]  # no *_key_file
    assert sorted(samples) == sorted(plain)  # a new endpoint key needs a sample here
    for kind in KINDS:
        keys = [k for k in plain if field_of(SECTIONS["endpoint"][k].attr) in COMMON | KINDS[kind].takes]
        lines = [f"kind = {kind}"] + [f"{k} = {samples[k]}" for k in keys if k != "kind"]
        (tmp_path / f"{kind}.conf").write_text(f"[endpoint {kind}]\n" + "\n".join(lines) + "\n")
        ep = parse_config(path=str(tmp_path / f"{kind}.conf"), environ={}).endpoints[0]
        assert (ep.kind, ep.timeout, ep.mappings, ep.vos) == (kind, 3.0, (("/a", "/b"),), ("atlas",))
        assert set(keys) > {"kind", "map"} and all(k in keys for k in KINDS[kind].needs)


# --- the one range-checking parser factory (fedd/config/values.py) -------------------------------


def test_in_range_bounds_open_and_closed() -> None:
    half_open = in_range(float, low=0, high=1, high_open=True, what="a fraction in [0, 1)")
    assert (half_open("0"), half_open("0.999")) == (0.0, 0.999)
    for bad in ("1", "-0.001", "nan", "inf", "-inf", "1e999"):
        with pytest.raises(ValueError, match=r"^expected a fraction in \[0, 1\), got "):
            half_open(bad)
    above = in_range(int, low=0, low_open=True, what="a positive integer")
    assert above("1") == 1
    assert above("1" + "0" * 400) == 10**400  # a huge int is compared, not turned into a float
    with pytest.raises(ValueError, match="expected a positive integer, got '0'"):
        above("0")
    with pytest.raises(ValueError, match="invalid literal"):  # int()'s own error for a non-integer
        above("1.5")
    unbounded = in_range(float, what="a finite number")
    assert unbounded("-1e300") == -1e300
    with pytest.raises(ValueError, match="expected a finite number, got 'nan'"):
        unbounded("nan")


def test_range_parsers_keep_their_messages() -> None:
    assert values.lat("90") == 90.0 and values.lon("-180") == -180.0
    with pytest.raises(ValueError, match=r"^latitude out of range: '90.5'$"):
        values.lat("90.5")
    with pytest.raises(ValueError, match=r"^expected a size above 0, got '0G'$"):
        values.positive_size("0G")
    with pytest.raises(ConfigError) as info:
        parse_config("[locate]\nwait_budget = nan\npresign_reuse = 1\n[endpoint e]\nkind = dav\nurl = http://h\n")
    assert info.value.errors == [
        "<string>:2: wait_budget: expected a positive number, got 'nan'",
        "<string>:3: presign_reuse: expected a fraction in [0, 1), got '1'",
    ]
