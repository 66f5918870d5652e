"""The shapes the fast multistatus path accepts (fedd.endpoints.multistatus): regular expressions for
the common form of a 207 answer (UTF-8, one element per property, no CDATA, DOCTYPE or character
references), written without backtracking so hostile input stays linear; anything else goes to lxml.
Pure."""

from __future__ import annotations

import re

_WS = " \t\r\n"
_S = "[ \t\r\n]"
_NAME = "[A-Za-z_][A-Za-z0-9_.-]*+"
# text with the five predefined entities at most; no CR (XML reads CR LF as LF) and none of the
# characters XML refuses
_CHAR = "[^<&\r\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]"
_TEXT = f"{_CHAR}*+(?:&(?:amp|lt|gt|quot|apos);{_CHAR}*+)*+"
_DECLS = f'(?:{_S}++xmlns(?::{_NAME})?="[^"<&\x00-\x1f]++")*+'
_DECL = re.compile(f'xmlns(?::({_NAME}))?="([^"]*)"', re.ASCII)
_HEAD = re.compile(
    (
        f'(?:\\xef\\xbb\\xbf)?(?:<\\?xml{_S}++version="1\\.0"(?:{_S}++encoding="[Uu][Tt][Ff]-8")?'
        f'(?:{_S}++standalone="(?:yes|no)")?{_S}*+\\?>)?{_S}*+'
        f"<(?P<root>(?:(?P<prefix>{_NAME}):)?multistatus)(?P<decls>{_DECLS}){_S}*+>"
    ).encode("latin-1"),
    re.ASCII,
)
_START_TAG = re.compile(b"<[A-Za-z_][^>]*>")
_OPEN_RE = re.compile(f"{_S}*+<({_NAME}:)?response[ \t\r\n>]", re.ASCII)
# a property: empty, text, or empty children (<D:resourcetype><D:collection/></D:resourcetype>);
# never named like the response's own structure (which `_propstats` splits on)


def _propstat_pattern(group: str, props: str = "", status: str = "") -> str:
    prop = (
        f"<(?!(?P=prefix):(?:prop|propstat|status|href|response)[ \t\r\n/>])(?P<{group}>(?:{_NAME}:)?{_NAME})"
        f"(?:{_S}*+/>|>{_TEXT}</(?P={group}){_S}*+>|>(?:{_S}*+<(?:{_NAME}:)?{_NAME}{_S}*+/>)*+{_S}*+</(?P={group}){_S}*+>)"
    )
    props_open, status_open = (f"(?P<{props}>", f"(?P<{status}>") if props else ("(?:", "(?:")
    return (
        f"{_S}*+<(?P=prefix):propstat>{_S}*+<(?P=prefix):prop>{props_open}(?:{_S}*+{prop})*+){_S}*+</(?P=prefix):prop>"
        f"{_S}*+<(?P=prefix):status>{status_open}{_TEXT})</(?P=prefix):status>{_S}*+</(?P=prefix):propstat>"
    )


# the first propstat in groups of its own (most answers have one, or one 200 and one 404)
_RESPONSE_RE = re.compile(
    f"{_S}*+<(?P<prefix>{_NAME}):response(?P<decls>{_DECLS}){_S}*+>"
    f"{_S}*+<(?P=prefix):href>(?P<href>{_TEXT})</(?P=prefix):href>"
    f"{_propstat_pattern('first', 'props', 'status')}(?P<more>(?:{_propstat_pattern('other')})*+)"
    f"{_S}*+</(?P=prefix):response>",
    re.ASCII,
)
_PROP_RE = re.compile(
    f"<(?:({_NAME}):)?({_NAME})(?:{_S}*+/>|>({_TEXT})</|>((?:{_S}*+<(?:{_NAME}:)?{_NAME}{_S}*+/>)*){_S}*+</)", re.ASCII
)
_EMPTY_RE = re.compile(f"<(?:({_NAME}):)?({_NAME}){_S}*+/>", re.ASCII)
# a file's response as Apache writes it, properties in its order: most of a big listing
_FILE_RESPONSE_RE = re.compile(
    f"{_S}*+<(?P<prefix>{_NAME}):response(?P<decls>{_DECLS}){_S}*+>"
    f"{_S}*+<(?P=prefix):href>(?P<href>{_TEXT})</(?P=prefix):href>"
    f"{_S}*+<(?P=prefix):propstat>{_S}*+<(?P=prefix):prop>"
    f"{_S}*+<(?P<props>{_NAME}):resourcetype/>"
    f"{_S}*+<(?P=props):getcontentlength>(?P<size>[0-9]{{1,19}})</(?P=props):getcontentlength>"
    f"{_S}*+<(?P=props):getlastmodified>(?P<modified>{_TEXT})</(?P=props):getlastmodified>"
    f"{_S}*+<(?P=props):getetag>(?P<etag>{_TEXT})</(?P=props):getetag>"
    f"{_S}*+</(?P=prefix):prop>{_S}*+<(?P=prefix):status>(?P<status>{_TEXT})</(?P=prefix):status>"
    f"{_S}*+</(?P=prefix):propstat>{_S}*+</(?P=prefix):response>",
    re.ASCII,
)
_MAX_SCOPES = 64
_ENTITIES = (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'"), ("&amp;", "&"))
_propstat_res: dict[str, re.Pattern[str]] = {}


def _propstats(prefix: str) -> re.Pattern[str]:
    """(props, status) of each <prefix:propstat> of a response `_RESPONSE_RE` accepted."""
    pattern = _propstat_res.get(prefix)
    if pattern is None:
        p = re.escape(prefix)
        pattern = _propstat_res[prefix] = re.compile(
            f"<{p}:propstat>{_S}*<{p}:prop>(.*?)</{p}:prop>{_S}*<{p}:status>({_TEXT})</{p}:status>", re.S
        )
    return pattern


def _unescape(text: str) -> str:
    if "&" not in text:
        return text
    for entity, char in _ENTITIES:
        text = text.replace(entity, char)
    return text


def _declarations(text: str) -> dict[str, str] | None:
    """prefix ('' for the default) -> URI; None for what XML namespaces refuse (lxml's to report)."""
    pairs = _DECL.findall(text)
    names = dict(pairs)
    if len(names) != len(pairs) or "xml" in names or "xmlns" in names:
        return None
    return names
