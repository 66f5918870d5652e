"""fedd-import-ugr on Dynafed configurations shaped like the ones sites run (tests/data/ugr/)."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from fedd.config import Config, parse_config
from fedd.ugrimport import main, read_ugr, translate

DATA = Path(__file__).resolve().parent / "data" / "ugr"
SECRET_ENV = {"AWS_EU_SECRET": "aws-secret-from-env"}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """The `site` sample copied under tmp_path, its INCLUDE pointing at the copy (Dynafed needs absolute paths)."""
    root = tmp_path / "ugr"
    shutil.copytree(DATA / "site", root)
    main_file = root / "ugr.conf"
    main_file.write_text(main_file.read_text().replace("@UGRDIR@", str(root)))
    return main_file


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_site_translates_to_a_valid_config(site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "fedd.conf"
    code, out, _ = run_main([str(site), "-o", str(output)], capsys)
    assert code == 0 and out == ""
    assert stat.S_IMODE(output.stat().st_mode) == 0o640  # it holds keys
    config = parse_config(path=str(output), environ=SECRET_ENV)
    assert config.locate.wait_budget == 20
    assert config.locate.lru_entries == 500000
    assert config.locate.positive_ttl == 3600  # itemmaxttl, not the sliding itemttl
    assert config.locate.negative_ttl == 10
    assert config.locate.memcached == ("memcache1.example.org:11211", "memcache2.example.org:11211")
    assert config.geo.database == "/usr/share/GeoIP/GeoLite2-City.mmdb"
    assert config.geo.fuzz_km == 150
    assert config.write.allow_overwrite is True
    eps = {ep.id: ep for ep in config.endpoints}
    assert list(eps) == ["cern-s3", "aws-eu", "dav_plugin_dcache_desy", "mirror-http", "azure-we"]

    cern = eps["cern-s3"]  # path-style (s3.alternate) Ceph RGW, glb.n2n_pfx /myfed in front of xlatepfx
    assert (cern.kind, cern.url, cern.bucket, cern.region) == ("s3", "https://s3.cern.ch", "atlas-data", "us-east-1")
    assert (cern.access_key, cern.secret_key) == ("CERNACCESSKEY", "cern-secret-key-1234")
    assert cern.mappings == (("/myfed/atlas", "/rucio/atlas"),)
    assert (cern.lat, cern.lon, cern.read, cern.list, cern.write) == (46.233, 6.0557, True, True, True)
    assert (cern.timeout, cern.presign_expiry, cern.verify_tls) == (10, 3600, True)  # locplugin.*.ops_timeout

    aws = eps["aws-eu"]  # virtual-hosted bucket, key prefix in the URL, two federation prefixes
    assert (aws.url, aws.bucket, aws.region) == ("https://s3.eu-west-1.amazonaws.com", "atlas-eu", "eu-west-1")
    assert aws.secret_key == "aws-secret-from-env"  # ${AWS_EU_SECRET} -> secret_key_env
    assert aws.mappings == (("/myfed/atlas/scratch", "/scratch"), ("/myfed/atlas/tmp", "/scratch"))
    assert (aws.list, aws.write, aws.presign_expiry) == (False, False, 7200)

    desy = eps["dav_plugin_dcache_desy"]
    assert (desy.kind, desy.url) == ("dav", "https://dcache.desy.de:2880/pnfs/desy.de/atlas")
    assert (desy.verify_tls, desy.timeout, desy.ca_file) == (False, 60, "")
    assert desy.mappings == (("/myfed/atlas", "/"),)
    assert (desy.lat, desy.lon) == (53.5753, 9.8789)

    mirror = eps["mirror-http"]  # plain HTTP: HEAD works, listing does not
    assert (mirror.kind, mirror.url, mirror.list) == ("dav", "https://mirror.example.org/atlas", False)
    assert mirror.ca_file == "/etc/pki/tls/certs/ca-bundle.crt"
    assert mirror.mappings == (("/myfed", "/"),)

    azure = eps["azure-we"]
    assert (azure.kind, azure.url) == ("azure", "https://atlasblob.blob.core.windows.net")
    assert (azure.account, azure.container, azure.presign_expiry) == ("atlasblob", "data", 3600)
    assert azure.account_key.startswith("Eby8vdM02xNOcqFl")
    assert azure.mappings == (("/myfed/belle", "/"),)


def test_untranslated_items_are_listed_with_file_and_line(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main([str(site)], capsys)
    assert code == 0
    conf_d = site.parent / "conf.d"
    expected = [
        f"{site}:9: glb.debug: 1",
        f"{site}:12: glb.log_stderr: false",
        f"{site}:15: glb.allowusers[]: nobody /myfed/ rl -- authorization: in the [auth] access_file write "
        "`/myfed anonymous rl`",
        f"{site}:16: glb.allowgroups[]: atlas/Role=production /myfed/atlas rwl -- authorization: in the [auth] "
        "access_file write `/myfed/atlas atlas/Role=production rwl`",
        f"{site}:20: locplugin.*.conn_timeout: 30",
        f"{site}:22: locplugin.*.status_checking: true -- fedd probes every endpoint",
        f"{site}:23: locplugin.*.status_checker_frequency: 10000",
        f"{site}:32: glb.filterplugin[]: libugrnoloopplugin.so noloop_plugin",
        f"{site}:37: glb.maxlistitems: 10000",
        f"{site}:40: infohandler.itemttl: 600 -- fedd has no sliding expiry",
        f"{site}:53: extcache.memcached.ttl: 43200",
        f"{site}:54: extcache.memcached.useBinaryProtocol: true",
        f"{site}:56: glb.authorizationplugin[]: libugrauthplugin_python.so",
        f"{conf_d}/30-desy-dav.conf:6: locplugin.dav_plugin_dcache_desy.cli_certificate:",
        f"{conf_d}/30-desy-dav.conf:7: locplugin.dav_plugin_dcache_desy.ca_path: /etc/grid-security/certificates",
        f"{conf_d}/40-web.conf:4: locplugin.mirror-http.metalink_support: true",
        f"{conf_d}/60-lfc.conf:2: glb.locplugin[]: libugrlocplugin_dmliteclient.so plugdmliteMY",
        f"{conf_d}/60-lfc.conf:3: locplugin.plugdmliteMY.xlatepfx:",
    ]
    block = [line.removeprefix("#   ") for line in out.splitlines() if line.startswith("#   ")]
    stderr = [line.removeprefix("fedd-import-ugr: not translated: ") for line in err.splitlines()]
    assert block == stderr
    assert f"# Not translated ({len(block)}): review these by hand." in out
    assert len(block) == len(expected), "\n".join(block)
    for line, start in zip(block, expected, strict=True):  # in file order, each once
        assert line.startswith(start), (line, start)
    assert "conn_timeout" in block[4] and block.count(block[4]) == 1  # locplugin.* reported once, not per endpoint
    assert "README" not in out  # only *.conf files are included


def test_azure_is_untranslated_without_the_azure_kind(site: Path) -> None:
    ugr = read_ugr(str(site))
    result = translate(ugr, source=str(site), environ=SECRET_ENV, kinds=("s3", "dav", "local"))
    config = parse_config(result.text, environ=SECRET_ENV)
    assert "azure-we" not in {ep.id for ep in config.endpoints} and "account_key" not in result.text
    remarks = [r for r in result.untranslated if "libugrlocplugin_azure.so" in r.text]
    assert [r.where for r in remarks] == [f"{site.parent}/conf.d/50-azure.conf:2"]
    assert "has no fedd equivalent: endpoint azure-we not translated" in remarks[0].text
    # its keys are listed too
    assert any(r.text.startswith("locplugin.azure-we.azure.key:") for r in result.untranslated)


def test_secrets_to_files(site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    code, out, _ = run_main([str(site), "--secrets-to-files", str(keys)], capsys)
    assert code == 0
    for secret in ("cern-secret-key-1234", "CERNACCESSKEY", "Eby8vdM02xNOcqFl"):
        assert secret not in out
    assert f"secret_key_file = {keys}/cern-s3.secret" in out
    assert "secret_key_env = AWS_EU_SECRET" in out  # from the environment stays from the environment
    assert (keys / "cern-s3.secret").read_text() == "cern-secret-key-1234\n"
    assert (keys / "cern-s3.access").read_text() == "CERNACCESSKEY\n"
    assert (keys / "azure-we.account").read_text().startswith("Eby8vdM02xNOcqFl")
    assert sorted(p.name for p in keys.iterdir()) == [
        "aws-eu.access",
        "azure-we.account",
        "cern-s3.access",
        "cern-s3.secret",
    ]
    assert {stat.S_IMODE(p.stat().st_mode) for p in keys.iterdir()} == {0o600}
    config: Config = parse_config(out, environ=SECRET_ENV)
    assert config.endpoint("cern-s3").secret_key == "cern-secret-key-1234"


def test_missing_include_malformed_lines_and_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    path = DATA / "broken" / "ugr.conf"
    code, out, err = run_main([str(path)], capsys)
    assert code == 0  # what is left is a valid configuration
    for line, text in (
        (3, "INCLUDE /nonexistent/ugr/conf.d: No such file or directory; nothing included"),
        (4, "INCLUDE 'conf.d': not an absolute path, ignored"),
        (5, "malformed line (expected 'key: value'), ignored: 'this line has no colon'"),
        (6, "glb.locplugin[]: libugrlocplugin_dav.so short-line 10 -- expected '<library> <id> <threads> <url>'"),
        (8, "locplugin.site-a.geo_latitude: north -- not a latitude"),
        (10, "locplugin.site-a.ops_timeout: soon -- not a number > 0: timeout not set"),
        (11, "extcache.memcached.server[]: memcache.example.org -- expected host:port"),
    ):
        assert f"{path}:{line}: {text}" in err
        assert f"#   {path}:{line}: {text}" in out
    config = parse_config(out)
    (ep,) = config.endpoints
    assert (ep.id, ep.kind, ep.url, ep.mappings) == (
        "site-a",
        "dav",
        "https://dav.site-a.example.org/data",
        (("/", "/"),),
    )
    assert (ep.lat, ep.lon, ep.timeout) == (None, None, 5.0)  # the bad values are not half-applied
    assert config.locate.memcached == ()


def test_nothing_to_federate_fails_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "fedd.conf"
    code, out, err = run_main([str(DATA / "broken" / "no-endpoints.conf"), "-o", str(output)], capsys)
    assert code == 1 and out == "" and not output.exists()
    assert "does not parse; nothing written" in err
    assert "no [endpoint ...] section: nothing to federate" in err
    assert "libugrlocplugin_dmliteclient.so has no fedd equivalent" in err


def test_missing_ugr_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main([str(tmp_path / "ugr.conf")], capsys)
    assert code == 2 and out == ""
    assert f"cannot read {tmp_path / 'ugr.conf'}: No such file or directory" in err


def translate_text(tmp_path: Path, text: str) -> tuple[Config, list[str]]:
    path = tmp_path / "ugr.conf"
    path.write_text(text)
    result = translate(read_ugr(str(path)), source=str(path), environ={})
    return parse_config(result.text, environ={}), [r.text for r in result.untranslated]


@pytest.mark.parametrize(
    ("url", "alternate", "base", "bucket", "endpoint_prefix"),
    [
        ("s3s://s3.cern.ch/atlas", "true", "https://s3.cern.ch", "atlas", "/"),
        ("s3://minio.example.org:9000/data/sub/dir", "yes", "http://minio.example.org:9000", "data", "/sub/dir"),
        ("s3s://atlas.s3.amazonaws.com/", "false", "https://s3.amazonaws.com", "atlas", "/"),
        ("https://atlas.s3.example.org:8443/pfx", "", "https://s3.example.org:8443", "atlas", "/pfx"),
        ("s3://127.0.0.1:9000/bucket", "", "http://127.0.0.1:9000", "bucket", "/"),  # no DNS name: path style
    ],
)
def test_s3_url_forms(tmp_path: Path, url: str, alternate: str, base: str, bucket: str, endpoint_prefix: str) -> None:
    lines = [f"glb.locplugin[]: libugrlocplugin_s3.so s3ep 10 {url}", "locplugin.s3ep.s3.pub_key: AK"]
    lines.append("locplugin.s3ep.s3.priv_key: SK")
    if alternate:
        lines.append(f"locplugin.s3ep.s3.alternate: {alternate}")
    config, _ = translate_text(tmp_path, "\n".join(lines) + "\n")
    ep = config.endpoint("s3ep")
    assert (ep.url, ep.bucket, ep.mappings) == (base, bucket, (("/", endpoint_prefix),))


def test_n2n_prefix_translation(tmp_path: Path) -> None:
    # requests for /fed/x become /data/x inside UGR, then xlatepfx maps /data -> /store on the endpoint
    config, remarks = translate_text(
        tmp_path,
        "glb.n2n_pfx: /fed\nglb.n2n_newpfx: /data\n"
        "glb.locplugin[]: libugrlocplugin_dav.so a 10 https://a.example.org\n"
        "locplugin.a.xlatepfx: /data/atlas /data/cms /store\n"
        "glb.locplugin[]: libugrlocplugin_dav.so b 10 https://b.example.org/root\n"
        "locplugin.b.xlatepfx: / /b\n"
        "glb.locplugin[]: libugrlocplugin_dav.so c 10 https://c.example.org\n"
        "locplugin.c.xlatepfx: /other /c\n"
        "glb.locplugin[]: libugrlocplugin_dav.so d 10 https://d.example.org\n",
    )
    maps = {ep.id: ep.mappings for ep in config.endpoints}
    assert maps["a"] == (("/fed/atlas", "/store"), ("/fed/cms", "/store"))
    assert maps["b"] == (("/fed", "/b/data"),)
    assert maps["c"] == (("/", "/"),)  # nothing reachable: fedd's default mapping, and a remark
    assert maps["d"] == (("/fed", "/data"),)
    assert "c: prefix /other is outside glb.n2n_newpfx" in remarks


def test_repeated_keys_keep_the_last_value_and_env_is_substituted(tmp_path: Path) -> None:
    path = tmp_path / "ugr.conf"
    path.write_text(
        "glb.locplugin[]: libugrlocplugin_s3.so s3 10 s3s://${S3_HOST}/bkt\nlocplugin.s3.s3.alternate: true\n"
        "locplugin.s3.s3.pub_key: first\nlocplugin.s3.s3.pub_key: second\nlocplugin.s3.s3.priv_key: ${NOT_SET_X}\n"
        "locplugin.s3.s3.region: ${REGION_NOT_SET}\n"
    )
    result = translate(read_ugr(str(path)), source=str(path), environ={"S3_HOST": "rgw.example.org"})
    config = parse_config(result.text, environ={"NOT_SET_X": "sk"})
    ep = config.endpoint("s3")
    assert (ep.url, ep.access_key, ep.secret_key) == ("https://rgw.example.org", "second", "sk")
    assert ep.region == "${REGION_NOT_SET}"
    assert [r.text for r in result.untranslated] == [
        "locplugin.s3.s3.region: ${REGION_NOT_SET} -- environment variable REGION_NOT_SET is not set here: "
        "kept as written"
    ]
