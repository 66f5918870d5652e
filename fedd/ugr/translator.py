"""UGR settings to fedd's: the globals, one `[endpoint]` per `glb.locplugin[]` line, and a remark
(file:line and why) for everything without a fedd equivalent. `locplugin.*.key` applies to every
plugin that does not set `key` itself; `locplugin.<id>.*` keys configure one endpoint."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fedd.config import ID_RE as _ID_RE
from fedd.ugr.reader import Entry, Remark, UgrConfig

ENV_RE = re.compile(r"\$\{([^}]+)\}")
_SCHEMES = {"http": "http", "https": "https", "s3": "http", "s3s": "https", "dav": "http", "davs": "https"}
_LOCPLUGINS = {
    "libugrlocplugin_s3.so": "s3",
    "libugrlocplugin_dav.so": "dav",
    "libugrlocplugin_http.so": "http",
    "libugrlocplugin_azure.so": "azure",
}
_GEOPLUGINS = ("libugrgeoplugin_geoip.so", "libugrgeoplugin_mmdb.so")
# keys read directly below; anything else is reported with the hint given here, if any
_HINTS = {
    "glb.debug": "fedd logs through twistd (the journal under systemd)",
    "glb.log_stderr": "fedd logs through twistd (the journal under systemd)",
    "glb.debug.components": "fedd logs through twistd (the journal under systemd)",
    "glb.maxlistitems": "no equivalent: fedd merges listings without an item limit",
    "glb.allowusers": "authorization",
    "glb.allowgroups": "authorization",
    "glb.authorizationplugin": "authorization plugin: fedd uses [auth] access_file, gridmap_file and "
    "[issuer ...] sections; port its rules by hand",
    "extcache.memcached.ttl": "fedd keeps shared entries for [locate] positive_ttl / negative_ttl",
    "extcache.memcached.useBinaryProtocol": "fedd speaks memcached's text protocol",
    "status_checking": "fedd probes every endpoint ([health] interval, timeout, hysteresis counts)",
    "status_checker_frequency": "fedd probes every endpoint every [health] interval seconds (one setting)",
    "cli_certificate": "fedd does not present client certificates to endpoints",
    "cli_private_key": "fedd does not present client certificates to endpoints",
    "cli_type": "fedd does not present client certificates to endpoints",
    "cli_password": "fedd does not present client certificates to endpoints",
    "auth_login": "fedd does not send HTTP basic credentials to endpoints",
    "auth_passwd": "fedd does not send HTTP basic credentials to endpoints",
}


@dataclass
class _Endpoint:
    id: str
    kind: str
    where: str
    keys: dict[str, str] = field(default_factory=dict)
    maps: list[tuple[str, str]] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)  # fedd key -> value (access_key, secret_key, account_key)


@dataclass
class Translation:
    text: str
    untranslated: list[Remark]
    secret_files: dict[str, str]


class Translator:
    """One translation: `run()` fills `sections`, `endpoints` and `remarks`."""

    def __init__(self, ugr: UgrConfig, environ: Mapping[str, str], kinds: Sequence[str]) -> None:
        self.ugr = ugr
        self.environ = environ
        self.kinds = kinds
        self.used: set[str] = set()
        self.remarks: list[Remark] = list(ugr.remarks)
        self.sections: dict[str, dict[str, str | list[str]]] = {}
        self.endpoints: list[_Endpoint] = []

    # --- helpers -------------------------------------------------------------------------------
    def get(self, key: str, *, secret: bool = False) -> Entry | None:
        """The entry for `key` (or its `locplugin.*.` default), `${VAR}` substituted, marked as used."""
        entry = self.ugr.values.get(key)
        if entry is None and key.startswith("locplugin."):
            entry = self.ugr.values.get("locplugin.*." + key.split(".", 2)[2])
        if entry is None:
            return None
        self.used.add(entry.key)
        if secret and ENV_RE.fullmatch(entry.value):  # fedd reads it from the environment too (*_env)
            return entry
        return self.subst(entry)

    def subst(self, entry: Entry) -> Entry:
        """`${VAR}` replaced from the environment, as UGR does."""

        def one(match: re.Match[str]) -> str:
            if match.group(1) in self.environ:
                return self.environ[match.group(1)]
            self.remark(entry, f"environment variable {match.group(1)} is not set here: kept as written")
            return match.group(0)

        return Entry(entry.key, ENV_RE.sub(one, entry.value), entry.where, entry.listed)

    def remark(self, entry: Entry, text: str) -> None:
        self.remarks.append(Remark(entry.where, f"{entry.name}: {entry.value} -- {text}"))

    def number(self, entry: Entry | None, fedd_key: str, *, positive: bool = False, integer: bool = False) -> str:
        """The value if it is a number fedd takes for `fedd_key`, else '' (and a remark)."""
        if entry is None:
            return ""
        try:
            value = int(entry.value) if integer else float(entry.value)
        except ValueError:
            value = -1
        if value > 0 or (value == 0 and not positive):
            return entry.value
        what = "integer" if integer else "number"
        self.remark(entry, f"not a {what} {'> 0' if positive else '>= 0'}: {fedd_key} not set")
        return ""

    def set(self, section: str, key: str, value: str) -> None:
        self.sections.setdefault(section, {})[key] = value

    # --- the translation -----------------------------------------------------------------------
    def run(self) -> None:
        self.globals()
        for entry in self.ugr.arrays.get("glb.locplugin", []):
            self.locplugin(self.subst(entry))
        self.used.add("glb.locplugin")
        for key, entries in self.ugr.arrays.items():
            if key not in self.used:
                for entry in entries:
                    self.untranslated(entry)
        for key, entry in self.ugr.values.items():
            if key not in self.used:
                self.untranslated(entry)
        order = {name: i for i, name in reversed(list(enumerate(self.ugr.names)))}

        def position(remark: Remark) -> tuple[int, int]:
            name, _, line = remark.where.rpartition(":")
            return (order.get(name, len(order)), int(line) if line.isdigit() else 0)

        self.remarks = sorted(dict.fromkeys(self.remarks), key=position)  # once each, in file order

    def untranslated(self, entry: Entry) -> None:
        sub = entry.key.split(".", 2)[2] if entry.key.startswith("locplugin.") and entry.key.count(".") >= 2 else ""
        hint = _HINTS.get(entry.key) or _HINTS.get(sub) or "no fedd equivalent"
        if entry.key in ("glb.allowusers", "glb.allowgroups"):
            parts = entry.value.split()
            if len(parts) >= 2:
                who = "anonymous" if parts[0] == "nobody" else parts[0]
                letters = "".join(c for c in (parts[2] if len(parts) > 2 else "r") if c in "rwl") or "r"
                hint = f"authorization: in the [auth] access_file write `{parts[1].rstrip('/') or '/'} {who} {letters}`"
        self.remark(entry, hint)

    def globals(self) -> None:
        if v := self.number(self.get("glb.waittimeout"), "wait_budget", positive=True):
            self.set("locate", "wait_budget", v)
        if v := self.number(self.get("infohandler.maxitems"), "lru_entries", positive=True, integer=True):
            self.set("locate", "lru_entries", v)
        maxttl, ttl = self.get("infohandler.itemmaxttl"), self.get("infohandler.itemttl")
        if maxttl and ttl:
            self.remark(ttl, "fedd has no sliding expiry: positive_ttl comes from infohandler.itemmaxttl")
        if v := self.number(maxttl or ttl, "positive_ttl"):
            self.set("locate", "positive_ttl", v)
        negative = self.get("infohandler.itemttl_negative") or self.get("infohandler.itemmaxttl_negative")
        if v := self.number(negative, "negative_ttl"):
            self.set("locate", "negative_ttl", v)
        useext = self.get("infohandler.useextcache")
        servers = self.ugr.arrays.get("extcache.memcached.server", [])
        self.used.add("extcache.memcached.server")
        for entry in map(self.subst, servers):
            if useext and not _true(useext.value):
                self.remark(entry, "infohandler.useextcache is false: memcached not configured")
                continue
            if not re.fullmatch(r"[^\s:]+:[0-9]{1,5}|\[[0-9a-fA-F:]+\]:[0-9]{1,5}", entry.value):
                self.remark(entry, "expected host:port: not configured")
                continue
            mem = self.sections.setdefault("locate", {}).setdefault("memcached", [])
            assert isinstance(mem, list)
            mem.append(entry.value)
        if e := self.get("glb.allowoverwrite"):
            self.set("write", "allow_overwrite", "yes" if _true(e.value) else "no")
        if v := self.number(self.get("glb.filterplugin.geoip.fuzz"), "fuzz_km"):
            self.set("geo", "fuzz_km", v)
        use_geoip = self.get("glb.use_geoip")
        self.used.add("glb.filterplugin")
        for entry in map(self.subst, self.ugr.arrays.get("glb.filterplugin", [])):
            parts = entry.value.split()
            lib = os.path.basename(parts[0]) if parts else ""
            if lib not in _GEOPLUGINS:
                self.remark(entry, f"filter plugin {lib or '?'} has no fedd equivalent")
            elif use_geoip and not _true(use_geoip.value):
                self.remark(entry, "glb.use_geoip is false: [geo] database not set")
            elif len(parts) < 3:
                self.remark(entry, "GeoIP plugin without a database path")
            elif not parts[2].endswith(".mmdb"):
                self.remark(
                    entry,
                    "legacy GeoIP (.dat) database: fedd reads GeoIP2/GeoLite2 City MMDB files; "
                    "set [geo] database to one (e.g. /usr/share/GeoIP/GeoLite2-City.mmdb)",
                )
            else:
                self.set("geo", "database", parts[2])
        pfx, newpfx = self.get("glb.n2n_pfx"), self.get("glb.n2n_newpfx")
        self.n2n_pfx = _segments(pfx.value if pfx else "")
        self.n2n_new = _segments(newpfx.value if newpfx else "")

    def locplugin(self, entry: Entry) -> None:
        parts = entry.value.split()
        if len(parts) < 4:
            self.remark(entry, "expected '<library> <id> <threads> <url>': endpoint not translated")
            return
        lib, pid, url = os.path.basename(parts[0]), parts[1], parts[3]
        kind = _LOCPLUGINS.get(lib)
        if kind == "azure" and "azure" not in self.kinds:
            kind = None
        if kind is None:
            self.remark(entry, f"location plugin {lib} has no fedd equivalent: endpoint {pid} not translated")
            return
        fid = pid if _ID_RE.match(pid) else re.sub(r"[^A-Za-z0-9_.-]", "-", pid).strip("-_.")[:63] or "endpoint"
        if fid != pid:
            self.remark(entry, f"plugin id {pid!r} is not a fedd endpoint id: named {fid!r}")
        if any(ep.id == fid for ep in self.endpoints):
            self.remark(entry, f"a second endpoint named {fid}: not translated")
            return
        ep = _Endpoint(fid, "dav" if kind == "http" else kind, entry.where)
        pre = f"locplugin.{pid}."
        prefix = self.endpoint_url(ep, kind, url, pre, entry)
        if prefix is None:
            return
        self.mappings(ep, pre, prefix)
        self.options(ep, kind, pre)
        if kind == "http":
            ep.keys["list"] = "no"  # plain HTTP: fedd stats with HEAD and cannot list (nor could Dynafed)
        for key in [k for k in self.ugr.values if k.startswith(pre)]:
            if key not in self.used:
                self.untranslated(self.ugr.values[key])
                self.used.add(key)
        self.endpoints.append(ep)

    def endpoint_url(self, ep: _Endpoint, kind: str, url: str, pre: str, entry: Entry) -> list[str] | None:
        """Set url (and bucket/account/container); return the path prefix that stays on the endpoint side."""
        parts = urlsplit(url)
        scheme = _SCHEMES.get(parts.scheme.lower())
        if scheme is None or not parts.netloc:
            self.remark(entry, f"URL {url!r} not understood (http, https, s3, s3s, dav, davs): endpoint not translated")
            return None
        segs = _segments(parts.path)
        host = parts.hostname or ""
        if kind == "s3":
            alternate = self.get(pre + "s3.alternate")
            path_style = bool(alternate and _true(alternate.value))
            if not path_style and (re.fullmatch(r"[0-9.]+|\[?[0-9a-fA-F:]+\]?", host) or "." not in host):
                path_style = bool(segs)
                self.remark(entry, "s3.alternate is not set but the host cannot carry a bucket: path-style assumed")
            if path_style:
                if not segs:
                    self.remark(entry, f"path-style S3 URL {url!r} names no bucket: endpoint not translated")
                    return None
                ep.keys["url"], ep.keys["bucket"] = f"{scheme}://{parts.netloc}", segs[0]
                return segs[1:]
            bucket, _, rest = parts.netloc.partition(".")
            ep.keys["url"], ep.keys["bucket"] = f"{scheme}://{rest}", bucket
            return segs
        if kind == "azure":
            if host.endswith(".blob.core.windows.net") and segs:
                ep.keys["url"], ep.keys["account"] = f"{scheme}://{parts.netloc}", host.split(".")[0]
                ep.keys["container"] = segs[0]
                return segs[1:]
            if len(segs) >= 2:  # emulator style: http://host:port/<account>/<container>
                ep.keys["url"] = f"{scheme}://{parts.netloc}/{segs[0]}"
                ep.keys["account"], ep.keys["container"] = segs[0], segs[1]
                return segs[2:]
            self.remark(entry, f"Azure URL {url!r} names no container: endpoint not translated")
            return None
        ep.keys["url"] = f"{scheme}://{parts.netloc}" + "".join("/" + s for s in segs)
        return []

    def mappings(self, ep: _Endpoint, pre: str, url_prefix: list[str]) -> None:
        pairs: list[tuple[list[str], list[str]]] = [([], [])]
        if e := self.get(pre + "xlatepfx"):
            words = e.value.split()
            if len(words) < 2 or not all(w.startswith("/") for w in words):
                self.remark(e, "expected '<federation prefix>... <endpoint prefix>', absolute paths: no mapping")
            else:
                pairs = [(_segments(w), _segments(words[-1])) for w in words[:-1]]
        for src, dst in pairs:
            # a request path goes through glb.n2n_pfx -> glb.n2n_newpfx first, then xlatepfx
            if _under(src, self.n2n_new):
                fed, extra = self.n2n_pfx + src[len(self.n2n_new) :], []
            elif _under(self.n2n_new, src):
                fed, extra = self.n2n_pfx, self.n2n_new[len(src) :]
            else:
                ep_where = e.where if e else ep.where
                self.remarks.append(Remark(ep_where, f"{ep.id}: prefix /{'/'.join(src)} is outside glb.n2n_newpfx"))
                continue
            pair = ("/" + "/".join(fed), "/" + "/".join(url_prefix + dst + extra))
            if pair[0] not in (m[0] for m in ep.maps):
                ep.maps.append(pair)

    def options(self, ep: _Endpoint, kind: str, pre: str) -> None:
        for ugr_key, fedd_key in (("readable", "read"), ("listable", "list"), ("writable", "write")):
            if e := self.get(pre + ugr_key):
                ep.keys[fedd_key] = "yes" if _true(e.value) else "no"
        lat, lon = self.get(pre + "geo_latitude"), self.get(pre + "geo_longitude")
        if lat and lon:
            if _in_range(lat.value, 90) and _in_range(lon.value, 180):
                ep.keys["lat"], ep.keys["lon"] = lat.value, lon.value
            for e, limit, what in ((lat, 90, "latitude"), (lon, 180, "longitude")):
                if not _in_range(e.value, limit):
                    self.remark(e, f"not a {what} (-{limit} to {limit}): lat/lon not set")
        elif e := lat or lon:
            self.remark(e, "needs both geo_latitude and geo_longitude: lat/lon not set")
        ops, conn = self.get(pre + "ops_timeout"), self.get(pre + "conn_timeout")
        if ops and conn:
            self.remark(conn, "fedd has one timeout per request, connection included: taken from ops_timeout")
        if v := self.number(ops or conn, "timeout", positive=True):
            ep.keys["timeout"] = v
        if e := self.get(pre + "ssl_check"):
            ep.keys["verify_tls"] = "yes" if _true(e.value) else "no"
        if e := self.get(pre + "ca_path"):
            if os.path.isfile(e.value) or e.value.endswith((".pem", ".crt")):
                ep.keys["ca_file"] = e.value
            else:
                self.remark(e, "a CA directory: fedd's ca_file takes one PEM bundle (the system CAs are the default)")
        secrets: tuple[tuple[str, str], ...] = ()
        if kind == "s3":
            if e := self.get(pre + "s3.region"):
                ep.keys["region"] = e.value
            validity = self.get(pre + "s3.signaturevalidity")
            secrets = (("s3.pub_key", "access_key"), ("s3.priv_key", "secret_key"))
        elif kind == "azure":
            validity = self.get(pre + "azure.signaturevalidity")
            secrets = (("azure.key", "account_key"),)
        else:
            validity = None
        if v := self.number(validity, "presign_expiry", positive=True, integer=True):
            ep.keys["presign_expiry"] = v
        for ugr_key, fedd_key in secrets:
            if e := self.get(pre + ugr_key, secret=True):
                ep.secrets[fedd_key] = e.value


def _true(text: str) -> bool:
    return text.strip().lower() in ("yes", "true")  # UGR's GetBool: anything else is false


def _in_range(text: str, limit: float) -> bool:
    try:
        return -limit <= float(text) <= limit
    except ValueError:
        return False


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


def _under(path: list[str], prefix: list[str]) -> bool:
    return path[: len(prefix)] == prefix
