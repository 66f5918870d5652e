"""STOMP 1.2 frames: encoding, header escapes, a bounded parser, heart-beat negotiation.

Pure code, no I/O: `fedd.events.stomp_protocol` feeds it the bytes a broker sends.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_FRAME = 1 << 20  # bytes: a broker's frame larger than this is an error, not memory growth
MAX_HEADERS = 128
_COMMAND = re.compile(rb"[A-Z]{1,32}")
_ESCAPES = {"\\\\": "\\", "\\n": "\n", "\\r": "\r", "\\c": ":"}
_UNESCAPE = re.compile(r"\\.?")


class FrameError(Exception):
    """The broker sent something that is not a STOMP frame (or one too large)."""


@dataclass(frozen=True)
class Frame:
    command: str
    headers: dict[str, str] = field(default_factory=dict)  # a repeated header: the first one counts (1.2)
    body: bytes = b""


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace(":", "\\c")


def unescape(value: str) -> str:
    def one(match: re.Match[str]) -> str:
        try:
            return _ESCAPES[match.group()]
        except KeyError:
            raise FrameError(f"undefined escape {match.group()!r} in a header") from None

    return _UNESCAPE.sub(one, value) if "\\" in value else value


def encode(command: str, headers: Iterable[tuple[str, str]], body: bytes = b"") -> bytes:
    """One frame. CONNECT's headers are not escaped (STOMP 1.2), every other frame's are."""
    if command == "CONNECT":
        lines = [f"{k}:{v}" for k, v in headers]
    else:
        lines = [f"{escape(k)}:{escape(v)}" for k, v in headers]
    return "\n".join([command, *lines, "", ""]).encode() + body + b"\0"


class FrameParser:
    """Frames from a byte stream, bounded: at most `max_frame` bytes are held for one frame.
    End-of-lines between frames are heart-beats and skipped; lines end in LF or CR LF."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while True:
            frame = self._next()
            if frame is None:
                return frames
            frames.append(frame)

    def _next(self) -> Frame | None:
        buf = self._buf
        start = 0
        while start < len(buf) and buf[start] in b"\r\n":  # heart-beats
            start += 1
        if start:
            del buf[:start]
        if not buf:
            return None
        lf2, crlf2 = buf.find(b"\n\n"), buf.find(b"\n\r\n")
        ends = [(i, n) for i, n in ((lf2, 2), (crlf2, 3)) if i >= 0]
        if not ends:
            if len(buf) > self.max_frame:
                raise FrameError(f"frame header longer than {self.max_frame} bytes")
            return None
        head_end, sep = min(ends)
        lines = [line[:-1] if line.endswith(b"\r") else line for line in bytes(buf[:head_end]).split(b"\n")]
        command = lines[0]
        if not _COMMAND.fullmatch(command):
            raise FrameError(f"not a STOMP command: {command[:40]!r}")
        if len(lines) - 1 > MAX_HEADERS:
            raise FrameError(f"more than {MAX_HEADERS} headers")
        raw = command != b"CONNECTED"  # CONNECTED's headers are not escaped
        headers: dict[str, str] = {}
        for line in lines[1:]:
            try:
                text = line.decode()
            except UnicodeDecodeError:
                raise FrameError("a header is not UTF-8") from None
            name, colon, value = text.partition(":")
            if not colon:
                raise FrameError(f"header without ':': {text[:40]!r}")
            if raw:
                name, value = unescape(name), unescape(value)
            headers.setdefault(name, value)
        body_start = head_end + sep
        length_text = headers.get("content-length")
        if length_text is not None:
            if not length_text.isdigit() or len(length_text) > 12:
                raise FrameError(f"bad content-length {length_text[:20]!r}")
            length = int(length_text)
            if body_start + length + 1 > self.max_frame:
                raise FrameError(f"frame of {length} bytes over the limit of {self.max_frame}")
            if len(buf) < body_start + length + 1:
                return None
            if buf[body_start + length] != 0:
                raise FrameError("frame body not followed by NUL")
            end = body_start + length
        else:
            end = buf.find(b"\0", body_start)
            if end < 0:
                if len(buf) > self.max_frame:
                    raise FrameError(f"frame longer than {self.max_frame} bytes")
                return None
        if end + 1 > self.max_frame:
            raise FrameError(f"frame longer than {self.max_frame} bytes")
        body = bytes(buf[body_start:end])
        del buf[: end + 1]
        return Frame(command.decode(), headers, body)


def heartbeats(ours: tuple[int, int], theirs: str) -> tuple[float, float]:
    """(seconds between our beats, seconds of silence that mean the peer is gone; 0: none) from our
    `heart-beat` (cx, cy in ms) and the peer's header value "sx,sy" (STOMP 1.2 negotiation)."""
    try:
        sx, sy = (int(v) for v in theirs.split(","))
    except ValueError:
        sx = sy = 0
    cx, cy = ours
    send = max(cx, sy) / 1000 if cx and sy else 0.0
    receive = max(sx, cy) / 1000 if sx and cy else 0.0
    return send, receive * 2 + 1.0 if receive else 0.0  # allow for a late beat
