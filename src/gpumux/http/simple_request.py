"""A forwarded request in its plainest form, recognised from the bytes a connection sent:
what the proxy's fast lane may serve without aiohttp's server.

Owns: `read_simple`, which says whether bytes hold one whole request of the one shape the
fast lane serves, only a start of one, or anything else; and `SimpleRequest`, what it read.
The shape: `POST <path> HTTP/1.1` to one of the forwarded JSON routes (no query string),
header lines of RFC 9110 tokens and printable ASCII values, one `Content-Length` and a body
of exactly that length, and none of `Transfer-Encoding`, `Expect`, `Upgrade`, or a
`Connection` other than `keep-alive`.
Does not: answer, refuse or forward anything. Bytes of any other shape are not judged
here: the connection hands them, unread, to aiohttp's server, whose parser and limits
decide (a 400, 413, 431, a chunked body, `Expect: 100-continue`, pipelining, HTTP/1.0).
So the fast lane accepts a subset of what aiohttp accepts, and reads it the same way:
header values stripped of spaces and tabs, names compared without case, the header
multidict in the order sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

from gpumux.http.routes import JSON_BODY, ROUTES

#: A head longer than aiohttp's line limit is never simple (aiohttp answers it).
MAX_SIMPLE_HEAD: Final = 8190
#: More header lines than this go to aiohttp (its limit is 128).
MAX_SIMPLE_HEADERS: Final = 100
#: The bytes of a header name (RFC 9110 tokens).
_TOKEN_BYTES: Final = (
    b"!#$%&'*+-.^_`|~0123456789" + bytes(range(0x41, 0x5B)) + bytes(range(0x61, 0x7B))
)
#: The bytes a simple head is made of: printable ASCII, tabs, and CRLF between lines.
_HEAD_BYTES: Final = bytes(range(0x20, 0x7F)) + b"\t\r\n"
_DIGITS: Final = re.compile(rb"[0-9]{1,15}")
_REFUSED_HEADERS: Final = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
_SIMPLE_PATHS: Final = frozenset(
    path.encode() for path, route in ROUTES.items() if route.body is JSON_BODY
)


class Reading(Enum):
    SIMPLE = "simple"  # one whole request of the shape, and nothing after it
    PARTIAL = "partial"  # a start of one: its head or its body has not all arrived
    OTHER = "other"  # anything else: aiohttp's server reads it


@dataclass(frozen=True)
class SimpleRequest:
    path: str
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass(frozen=True)
class Read:
    reading: Reading
    request: SimpleRequest | None = None
    head_complete: bool = False  # PARTIAL: the head has all arrived, the body has not


_OTHER: Final = Read(Reading.OTHER)
_PARTIAL_HEAD: Final = Read(Reading.PARTIAL)
_PARTIAL_BODY: Final = Read(Reading.PARTIAL, head_complete=True)


def read_simple(data: bytes, max_body: int) -> Read:
    """What `data`, the bytes a connection sent since its last request ended, holds."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        plausible = len(data) <= MAX_SIMPLE_HEAD and b"POST /".startswith(data[:6])
        return _PARTIAL_HEAD if plausible else _OTHER
    if head_end > MAX_SIMPLE_HEAD:
        return _OTHER
    head = data[:head_end]
    if head.translate(None, _HEAD_BYTES):  # a byte outside them: aiohttp judges it
        return _OTHER
    lines = head.split(b"\r\n")
    if head.count(b"\r") != len(lines) - 1 or head.count(b"\n") != len(lines) - 1:
        return _OTHER  # a bare CR or LF
    method, _, rest = lines[0].partition(b" ")
    path, _, version = rest.partition(b" ")
    if method != b"POST" or version != b"HTTP/1.1" or path not in _SIMPLE_PATHS:
        return _OTHER
    if len(lines) - 1 > MAX_SIMPLE_HEADERS:
        return _OTHER
    pairs: list[tuple[str, str]] = []
    length: int | None = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, _TOKEN_BYTES):
            return _OTHER
        value = value.strip(b" \t")
        lower = name.lower()
        if lower in _REFUSED_HEADERS:
            return _OTHER
        if lower == b"content-length":
            if length is not None or not _DIGITS.fullmatch(value):
                return _OTHER
            length = int(value)
        elif lower == b"connection" and value.lower() != b"keep-alive":
            return _OTHER
        pairs.append((name.decode("ascii"), value.decode("ascii")))
    if length is None or length > max_body:
        return _OTHER
    body_start = head_end + 4
    arrived = len(data) - body_start
    if arrived < length:
        return _PARTIAL_BODY
    if arrived > length:  # a pipelined request behind it: aiohttp reads the lot
        return _OTHER
    headers = CIMultiDictProxy(CIMultiDict(pairs))
    return Read(Reading.SIMPLE, SimpleRequest(path.decode("ascii"), headers, data[body_start:]))


def json_media_type(headers: CIMultiDictProxy[str]) -> bool:
    """The request's Content-Type is `application/json` (any case, any parameters), read
    so plainly that aiohttp's parser of the header would say the same."""
    value = headers.get("Content-Type")
    if value is None:
        return False
    media = value.split(";", 1)[0].strip(" \t").lower()
    return media == "application/json"
