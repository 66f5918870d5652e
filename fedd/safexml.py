"""XML from outside (clients' PROPFIND bodies, endpoints' and GOCDB's answers) parsed with lxml, safely.

The parser loads no DTD, expands no entity (an entity reference stays a reference: no billion
laughs, no external entity read), reads nothing from the network and refuses huge trees (libxml2's
depth and text-node limits); comments and processing instructions are dropped. A document with a
DOCTYPE is refused outright: no WebDAV, S3 or GOCDB answer has one, so it can only be hostile.
lxml parsers must not be shared between threads: `safe_parser()` makes a new one.
"""

from __future__ import annotations

from typing import Any

from lxml import etree


class UnsafeXML(ValueError):
    """The document is malformed, empty or has a DOCTYPE. `reason` says which in a few fixed words (fit
    for a client: it repeats nothing of the document); the message adds the parser's detail."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason


def safe_parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_comments=True, remove_pis=True
    )


def has_doctype(root: Any) -> bool:
    """Whether the document of `root` declared a DOCTYPE (internal subset or external DTD)."""
    docinfo = root.getroottree().docinfo
    return docinfo.internalDTD is not None or bool(docinfo.doctype)


def parse_untrusted(body: bytes) -> Any:
    """The root element of `body`; UnsafeXML when it is malformed, empty or has a DOCTYPE."""
    try:
        root = etree.fromstring(body, safe_parser())
    except etree.XMLSyntaxError as exc:
        raise UnsafeXML("malformed XML", exc.msg) from None
    if root is None:
        raise UnsafeXML("empty XML document")
    if has_doctype(root):
        raise UnsafeXML("the XML document has a DOCTYPE (refused)")
    return root
