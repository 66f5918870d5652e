"""fedd-import-ugr: translate a Dynafed (UGR) configuration into a fedd configuration.

    fedd-import-ugr /etc/ugr/ugr.conf -o /etc/fedd/fedd.conf [--secrets-to-files /etc/fedd/keys]

UGR's format: `key: value` lines, `#` comments, `key[]: value` appends to a list, `${VAR}` in a value
is taken from the environment, `INCLUDE /dir` (or `INCLUDE: /dir`) reads every `*.conf` in the
directory, sorted, after the including file; a repeated key keeps its last value; `locplugin.*.key`
applies to every plugin that does not set `key` itself. Endpoints are `glb.locplugin[]: <library>
<id> <threads> <url>` lines with `locplugin.<id>.*` keys.

Everything without a fedd equivalent is listed, with its file:line, in a comment block at the top of
the output and on stderr. The output is parsed with `fedd.config.parse_config` before it is written;
the exit status is 0 only when it parses.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence

from fedd import config as fedd_config
from fedd.ugr.reader import Entry, Remark, UgrConfig, UgrReadError, read_ugr
from fedd.ugr.translator import ENV_RE, Translation, Translator

__all__ = ["Entry", "Remark", "Translation", "UgrConfig", "UgrReadError", "check", "main", "read_ugr", "translate"]


def translate(
    ugr: UgrConfig,
    *,
    source: str,
    environ: Mapping[str, str],
    kinds: Sequence[str] = fedd_config.ENDPOINT_KINDS,
    secrets_dir: str | None = None,
) -> Translation:
    """The fedd configuration text for a UGR configuration (pure: the secret files are returned, not written)."""
    tr = Translator(ugr, environ, kinds)
    tr.run()
    secret_files: dict[str, str] = {}
    out = [f"# fedd configuration translated from {source} by fedd-import-ugr.", "#"]
    if tr.remarks:
        out.append(f"# Not translated ({len(tr.remarks)}): review these by hand.")
        out += [f"#   {r.where}: {r.text}" for r in tr.remarks]
    else:
        out.append("# Everything was translated.")
    out += [
        "",
        "[server]",
        "# Dynafed ran inside Apache: choose fedd's listener and host certificate (docs/configuration.md).",
        "#listen = ssl:443",
        "#tls_certificate = /etc/grid-security/hostcert.pem",
        "#tls_private_key = /etc/grid-security/hostkey.pem",
    ]
    for name in ("locate", "geo", "write"):
        if name in tr.sections:
            out += ["", f"[{name}]"]
            for key, value in tr.sections[name].items():
                out += [f"{key} = {v}" for v in (value if isinstance(value, list) else [value])]
    for ep in tr.endpoints:
        out += ["", f"# glb.locplugin[] at {ep.where}", f"[endpoint {ep.id}]", f"kind = {ep.kind}"]
        out += [f"{k} = {v}" for k, v in ep.keys.items()]
        for key, value in ep.secrets.items():
            if match := ENV_RE.fullmatch(value):
                out.append(f"{key}_env = {match.group(1)}")
            elif secrets_dir is not None:
                path = os.path.join(secrets_dir, f"{ep.id}.{key.removesuffix('_key')}")
                secret_files[path] = value + "\n"
                out.append(f"{key}_file = {path}")
            else:
                out.append(f"{key} = {value}")
        out += [f"map = {fed} {dst}" for fed, dst in ep.maps]
    return Translation("\n".join(out) + "\n", tr.remarks, secret_files)


def check(text: str, environ: Mapping[str, str]) -> list[str]:
    """The errors fedd would report for `text` (empty when it parses). `*_env` variables get a stand-in."""
    env = dict(environ)
    for var in re.findall(r"^\w+_env = (\S+)$", text, re.M):
        env.setdefault(var, "QUJD")  # base64, so that an Azure account key stand-in passes too
    try:
        fedd_config.parse_config(text, environ=env)
    except fedd_config.ConfigError as exc:
        return exc.errors
    return []


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedd-import-ugr", description="Translate a Dynafed (UGR) configuration into a fedd configuration."
    )
    parser.add_argument("ugr_conf", help="the UGR configuration, e.g. /etc/ugr/ugr.conf")
    parser.add_argument("-o", "--output", help="write the fedd configuration here (default: stdout)")
    parser.add_argument(
        "--secrets-to-files",
        metavar="DIR",
        help="write S3/Azure keys to DIR/<endpoint>.<access|secret|account> (mode 0600), not into the output",
    )
    args = parser.parse_args(argv)
    try:
        ugr = read_ugr(args.ugr_conf)
    except UgrReadError as exc:
        print(f"fedd-import-ugr: {exc}", file=sys.stderr)
        return 2
    environ = os.environ
    result = translate(ugr, source=args.ugr_conf, environ=environ)  # secrets inline: checked before any file
    for remark in result.untranslated:
        print(f"fedd-import-ugr: not translated: {remark.where}: {remark.text}", file=sys.stderr)
    errors = check(result.text, environ)
    if not errors and args.secrets_to_files:
        result = translate(ugr, source=args.ugr_conf, environ=environ, secrets_dir=args.secrets_to_files)
        try:
            os.makedirs(args.secrets_to_files, mode=0o700, exist_ok=True)
            for path, content in result.secret_files.items():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(content)
        except OSError as exc:
            print(f"fedd-import-ugr: cannot write the secret files: {exc}", file=sys.stderr)
            return 1
        errors = check(result.text, environ)
    if errors:
        print("fedd-import-ugr: the translated configuration does not parse; nothing written:", file=sys.stderr)
        for error in errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    if args.output:
        try:
            fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(result.text)
        except OSError as exc:
            print(f"fedd-import-ugr: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(result.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
