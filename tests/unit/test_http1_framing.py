"""Reply heads and chunked framing as the forwarding client reads them from a backend."""

from __future__ import annotations

import pytest

from gpumux.backends.http1_framing import (
    ChunkedScanner,
    FramingError,
    decode_chunks,
    head_end,
    parse_head,
)

pytestmark = pytest.mark.unit

CHUNKS = [b"data: one\n\n", b"data: " + b"x" * 300 + b"\n\n", b"data: [DONE]\n\n"]
FRAMES = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in CHUNKS)
BODY = FRAMES + b"0\r\n\r\n"


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_head_gives_status_headers_and_framing() -> None:
    raw = head(
        "HTTP/1.1 200 OK",
        "Content-Type: text/event-stream",
        "Transfer-Encoding: chunked",
        "X-Two: a",
        "x-two: b",
    )
    assert head_end(raw + b"rest") == len(raw)
    parsed = parse_head(raw)
    assert (parsed.status, parsed.chunked, parsed.length, parsed.keep_alive) == (
        200,
        True,
        None,
        True,
    )
    assert parsed.headers.getall("X-Two") == ["a", "b"]
    assert parsed.headers["content-type"] == "text/event-stream"


@pytest.mark.parametrize(
    ("lines", "keep_alive", "length"),
    [
        (["HTTP/1.1 200 OK", "Content-Length: 12"], True, 12),
        (["HTTP/1.1 200 OK", "Content-Length: 12", "Connection: close"], False, 12),
        (["HTTP/1.0 200 OK", "Content-Length: 12"], False, 12),
        (["HTTP/1.0 200 OK", "Content-Length: 12", "Connection: Keep-Alive"], True, 12),
        (["HTTP/1.1 200 OK"], False, None),  # the body runs until the connection closes
        (["HTTP/1.1 204 No Content"], True, None),
        (["HTTP/1.1 200 OK", "Transfer-Encoding: gzip"], False, None),
    ],
)
def test_keep_alive_and_length_follow_rfc_9112(
    lines: list[str], keep_alive: bool, length: int | None
) -> None:
    parsed = parse_head(head(*lines))
    assert (parsed.keep_alive, parsed.length) == (keep_alive, length)


def test_interim_and_bodiless_replies_are_recognised() -> None:
    assert parse_head(head("HTTP/1.1 100 Continue")).interim
    assert parse_head(head("HTTP/1.1 304 Not Modified")).bodiless


def test_header_bytes_survive_a_round_trip() -> None:
    parsed = parse_head(b"HTTP/1.1 200 OK\r\nX-Odd: caf\xc3\xa9 \xff\r\n\r\n")
    assert parsed.headers["X-Odd"].encode("utf-8", "surrogateescape") == b"caf\xc3\xa9 \xff"


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n Folded: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    ],
)
def test_malformed_heads_are_refused(raw: bytes) -> None:
    with pytest.raises(FramingError):
        parse_head(raw)


def feed_all(pieces: list[bytes]) -> tuple[bytes, ChunkedScanner]:
    scanner, out = ChunkedScanner(), b""
    for piece in pieces:
        out += scanner.feed(piece)
    return out, scanner


def test_a_body_fed_whole_comes_back_as_is_without_its_last_chunk() -> None:
    scanner = ChunkedScanner()
    assert scanner.feed(FRAMES) is FRAMES  # no copy on a chunk boundary
    finished_early = scanner.finished
    assert scanner.feed(b"0\r\n\r\n") == b""
    assert (finished_early, scanner.finished, scanner.trailing) == (False, True, b"")


WHOLE_PREFIXES = {b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in CHUNKS[:i]) for i in range(4)}


@pytest.mark.parametrize("cut", range(1, len(BODY)))
def test_any_split_in_two_yields_whole_chunks_only(cut: int) -> None:
    assert ChunkedScanner().feed(BODY[:cut]) in WHOLE_PREFIXES
    out, scanner = feed_all([BODY[:cut], BODY[cut:]])
    assert out == FRAMES
    assert scanner.finished
    assert scanner.trailing == b""


def test_byte_by_byte_feeding_finds_every_boundary() -> None:
    out, scanner = feed_all([BODY[i : i + 1] for i in range(len(BODY))])
    assert out == FRAMES
    assert scanner.finished
    assert decode_chunks(out) == b"".join(CHUNKS)


def test_extensions_trailers_and_what_follows_the_body() -> None:
    body = b"5;name=value\r\nhello\r\n0\r\nX-Trailer: yes\r\n\r\nNEXT"
    out, scanner = feed_all([body])
    assert out == b"5;name=value\r\nhello\r\n"
    assert decode_chunks(out) == b"hello"
    assert scanner.finished
    assert scanner.trailing == b"NEXT"


@pytest.mark.parametrize(
    ("frames", "whole"),
    [
        (b"5\r\nhello\r\n", True),  # one chunk a read: a token stream's usual case
        (b"1A\r\n" + b"x" * 26 + b"\r\n", True),
        (b"000000000000005\r\nhello\r\n", True),  # 15 digits, the most allowed
        (b"5;ext=1\r\nhello\r\n", True),
        (b"5\r\nhello\r\n1\r\n!\r\n", True),
        (b"6\r\nhello\r\n", False),  # the size says one byte more: held back
        (b"5\r\nhel", False),
    ],
)
def test_a_read_of_whole_chunks_comes_back_as_is(frames: bytes, whole: bool) -> None:
    scanner = ChunkedScanner()
    out = scanner.feed(frames)
    assert out is frames if whole else out == b""
    assert not scanner.finished


def test_a_chunk_cut_short_keeps_what_it_brought() -> None:
    scanner = ChunkedScanner()
    assert scanner.feed(b"b\r\ndata: on") == b""
    assert scanner.held_payload() == b"data: on"
    assert ChunkedScanner().held_payload() == b""


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n",  # not hex
        b"5\r\nhelloXX",  # no CRLF after the data
        b"1" * 5000,  # a size line that never ends
        b"-5\r\nhello\r\n",
        b"+5\r\nhello\r\n",  # int() would take these three; HTTP does not
        b"0_5\r\nhello\r\n",
        b"0000000000000005\r\nhello\r\n",  # a 16th digit
    ],
)
def test_malformed_chunks_are_refused(body: bytes) -> None:
    with pytest.raises(FramingError):
        ChunkedScanner().feed(body)
