"""Azure List Blobs answers: entries of one page, blob names, folder markers."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from fedd.endpoints.base import Entry, Stat, parse_http_date, parse_int

FOLDER_META = "hdi_isfolder"  # what Azure's own tools (ADLS, Storage Explorer, blobfuse) mark folders with


def _is_folder(metadata: dict[str, str]) -> bool:
    return metadata.get(FOLDER_META, "").lower() == "true"


def parse_blob_page(root: Any, prefix: str, entries: dict[str, Entry]) -> bool:
    """Add the entries of one List Blobs page (directly under `prefix`) to `entries`; True when the
    page holds the listed directory's own marker blob."""
    marker = False
    blobs = root.find("Blobs")
    if blobs is None:
        return False
    for item in blobs:
        name = blob_name(item)[len(prefix) :]
        if item.tag == "BlobPrefix":
            name = name.rstrip("/")
            if name and "/" not in name:
                entries[name] = Entry(name, Stat(is_dir=True))
            continue
        if item.tag != "Blob":
            continue
        if not name:
            marker = True  # the listed directory's own marker blob
            continue
        if "/" in name:
            continue
        meta = {m.tag.lower(): (m.text or "") for m in _children(item, "Metadata")}
        if _is_folder(meta):
            entries[name] = Entry(name, Stat(is_dir=True))
            continue
        if name in entries:  # a folder of the same name wins over a blob, as in merged listings
            continue
        props = item.find("Properties")
        entries[name] = Entry(
            name,
            Stat(
                size=parse_int(props.findtext("Content-Length")) if props is not None else None,
                mtime=parse_http_date(props.findtext("Last-Modified")) if props is not None else None,
                etag=(props.findtext("Etag") or "").strip('"') if props is not None else "",
            ),
        )
    return marker


def blob_name(item: Any) -> str:
    """A List Blobs <Name>; percent-encoded (Encoded="true") when it holds characters XML cannot."""
    element = item.find("Name")
    if element is None:
        return ""
    text = element.text or ""
    return unquote(text) if element.get("Encoded") == "true" else text


def _children(item: Any, tag: str) -> list[Any]:
    element = item.find(tag)
    return list(element) if element is not None else []
