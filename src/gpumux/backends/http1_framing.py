"""What a backend sends back over HTTP/1.1, parsed: the response head and the body's framing.

Owns: `parse_head` (status line and headers of one response), `ChunkedScanner`, which
finds where the chunks of a chunked body end so that whole chunks can be passed on byte
for byte (and holds back a chunk that has not fully arrived), and `decode_chunks`, the
payload of whole chunks for a body that is read to its end.
Does not: do I/O or decide what to do with a reply (`backends.http1` does).

The peer is a backend gpumux started on loopback (vLLM's uvicorn, or a mock), not the
internet, but nothing here trusts it: sizes are bounded and malformed framing raises
`FramingError`, which ends that exchange and closes its connection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from multidict import CIMultiDict

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_CHUNK_LINE_BYTES: Final = 4096
MAX_TRAILER_BYTES: Final = 64 * 1024
_MAX_SIZE_DIGITS: Final = 15
_HEX_DIGITS: Final = b"0123456789ABCDEFabcdef"
_STATUS_LINE: Final = re.compile(r"HTTP/1\.([01]) ([1-9][0-9]{2})(?: .*)?")
CRLF: Final = b"\r\n"


class FramingError(ValueError):
    """The backend's reply is not well-formed HTTP/1.1."""


@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: CIMultiDict[str]
    #: The connection may carry another request once this body has ended.
    keep_alive: bool
    chunked: bool
    #: Content-Length of a body that is not chunked; None: it ends when the connection does.
    length: int | None

    @property
    def interim(self) -> bool:
        """A 1xx reply, to be skipped: the final one follows on the same connection."""
        return 100 <= self.status < 200

    @property
    def bodiless(self) -> bool:
        return self.status in (204, 304)


def head_end(buffer: bytes | bytearray) -> int:
    """The index just past the blank line ending the head in `buffer`, or -1."""
    end = buffer.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def parse_head(raw: bytes) -> ResponseHead:
    """The status line and headers in `raw` (the head's bytes, blank line included)."""
    # Decoded once, as aiohttp's parser decodes each name and value (UTF-8, surrogate
    # escapes), so a header goes back out byte for byte; the separators are ASCII, so
    # splitting after decoding gives the same strings as decoding each part.
    lines = raw[:-4].decode("utf-8", "surrogateescape").split("\r\n")
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise FramingError(f"bad status line {lines[0][:80]!r}")
    minor, status = status_line.group(1), int(status_line.group(2))
    pairs: list[tuple[str, str]] = []
    connection: list[str] = []
    codings: list[str] = []
    lengths: set[str] = set()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip(" \t"):
            raise FramingError(f"bad header line {line[:80]!r}")
        value = value.strip(" \t")
        pairs.append((name, value))
        # The headers that frame the body, noted as they pass (one lookup each, not a
        # search of the multidict afterwards).
        lower = name.lower()
        if lower == "connection":
            connection += [t.strip().lower() for t in value.split(",")]
        elif lower == "transfer-encoding":
            codings += [t.strip().lower() for t in value.split(",")]
        elif lower == "content-length":
            lengths.add(value.strip())
    keep_alive = "close" not in connection and (minor == "1" or "keep-alive" in connection)
    chunked = bool(codings) and codings[-1] == "chunked"
    if codings and not chunked:
        keep_alive = False  # the body runs until the connection closes (RFC 9112 §6.3)
    length = None if codings else _content_length(lengths)
    if length is None and not chunked and status not in (204, 304) and status >= 200:
        keep_alive = False
    return ResponseHead(status, CIMultiDict(pairs), keep_alive, chunked, length)


def _content_length(values: set[str]) -> int | None:
    if not values:
        return None
    if (
        len(values) != 1
        or not (value := values.pop()).isascii()
        or not value.isdigit()
        or len(value) > 15
    ):
        raise FramingError("bad Content-Length")
    return int(value)


class ChunkedScanner:
    """Feeds a chunked body through, returning whole chunks as they complete.

    `feed(data)` returns the raw bytes (size lines included) of every chunk that `data`
    completes, together with any bytes held back from earlier calls; a chunk not yet
    whole is held back until it is. The last chunk (`0`, trailers, blank line) is never
    returned: it sets `finished`, and bytes after it land in `trailing`. In the common
    case, `data` ending on a chunk boundary, `data` itself is returned (no copy).
    """

    __slots__ = ("_held", "_need", "finished", "trailing")

    def __init__(self) -> None:
        self._held = bytearray()
        self._need = 0  # bytes the held frame needs before it is worth scanning again
        self.finished = False
        self.trailing = b""

    def feed(self, data: bytes) -> bytes:
        if self.finished:
            self.trailing += data
            return b""
        if self._held:
            self._held += data
            if len(self._held) < self._need:
                return b""
            buffer = bytes(self._held)
            self._held = bytearray()
        else:
            buffer = data
        boundary = self._scan(buffer)
        if boundary == len(buffer):
            return buffer
        if not self.finished:
            self._held = bytearray(buffer[boundary:])
        return buffer[:boundary]

    def held_payload(self) -> bytes:
        """The payload bytes of a chunk that started but never finished (for a failure)."""
        line_end = self._held.find(CRLF)
        if line_end < 0:
            return b""
        size = _chunk_size(bytes(self._held[:line_end]))
        start = line_end + 2
        return bytes(self._held[start : start + size])

    def _scan(self, buffer: bytes) -> int:
        """The index after the last whole chunk in `buffer`; sets `finished` at the last one."""
        position, size_of = 0, len(buffer)
        while position < size_of:
            line_end = buffer.find(CRLF, position)
            if line_end < 0:
                if size_of - position > MAX_CHUNK_LINE_BYTES:
                    raise FramingError("chunk size line too long")
                self._need = 0
                return position
            size = _chunk_size(buffer[position:line_end])
            if size == 0:
                end = _trailers_end(buffer, line_end + 2)
                if end < 0:
                    self._need = 0
                    return position
                self.finished = True
                self.trailing = buffer[end:]
                return position
            frame_end = line_end + 2 + size + 2
            if frame_end > size_of:
                self._need = frame_end - position
                return position
            if not buffer.startswith(CRLF, frame_end - 2):
                raise FramingError("chunk not followed by CRLF")
            position = frame_end
        self._need = 0
        return position


def decode_chunks(frames: bytes) -> bytes:
    """The payload of whole chunks as `ChunkedScanner.feed` returns them."""
    parts, position = [], 0
    while position < len(frames):
        line_end = frames.index(CRLF, position)
        size = _chunk_size(frames[position:line_end])
        start = line_end + 2
        parts.append(frames[start : start + size])
        position = start + size + 2
    return b"".join(parts)


def _chunk_size(line: bytes) -> int:
    if _bare_size(line):  # the usual line: hex digits and nothing else
        return int(line, 16)
    field = line.split(b";", 1)[0].strip(b" \t")  # chunk extensions are ignored
    if not _bare_size(field):
        raise FramingError(f"bad chunk size {line[:40]!r}")
    return int(field, 16)


def _bare_size(field: bytes) -> bool:
    """1 to 15 hex digits and nothing else: what `int(field, 16)` may then read (it would
    also take a sign, underscores and spaces, which HTTP does not)."""
    return 0 < len(field) <= _MAX_SIZE_DIGITS and not field.translate(None, _HEX_DIGITS)


def _trailers_end(buffer: bytes, start: int) -> int:
    if buffer.startswith(CRLF, start):
        return start + 2
    end = buffer.find(b"\r\n\r\n", start)
    if end < 0:
        if len(buffer) - start > MAX_TRAILER_BYTES:
            raise FramingError("trailers too long")
        return -1
    return end + 4
