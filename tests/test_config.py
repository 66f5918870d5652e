"""Configuration parsing: values, defaults, every error with file:line, includes, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedd.config import ConfigError, parse_config

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
