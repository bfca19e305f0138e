"""`read_simple`: the one request shape the fast lane serves, and everything it leaves to
aiohttp's server (which must then see the bytes unread)."""

from __future__ import annotations

import pytest

from gpumux.http.simple_request import (
    MAX_SIMPLE_HEAD,
    MAX_SIMPLE_HEADERS,
    Reading,
    json_media_type,
    read_simple,
)

pytestmark = pytest.mark.unit

BODY = b'{"model": "a", "stream": true}'
LIMIT = 1024 * 1024


def request(
    *headers: bytes, body: bytes = BODY, line: bytes = b"POST /v1/chat/completions HTTP/1.1"
) -> bytes:
    given = list(headers) or [b"Host: x", b"Content-Type: application/json"]
    if not any(h.lower().startswith(b"content-length") for h in given):
        given.append(b"Content-Length: %d" % len(body))
    return line + b"\r\n" + b"\r\n".join(given) + b"\r\n\r\n" + body


def test_a_plain_request_is_read_whole() -> None:
    read = read_simple(
        request(b"Host: x", b"Content-Type: application/json", b"Authorization:  Bearer k \t"),
        LIMIT,
    )
    assert read.reading is Reading.SIMPLE
    assert read.request is not None
    assert read.request.path == "/v1/chat/completions"
    assert read.request.body == BODY
    headers = read.request.headers
    assert headers["authorization"] == "Bearer k"  # stripped, as aiohttp strips values
    assert list(headers) == ["Host", "Content-Type", "Authorization", "Content-Length"]


@pytest.mark.parametrize("cut", [1, 5, 20, 60])
def test_a_start_of_one_is_partial(cut: int) -> None:
    whole = request()
    read = read_simple(whole[:cut], LIMIT)
    assert read.reading is Reading.PARTIAL
    assert not read.head_complete


def test_a_head_without_all_of_its_body_is_partial_with_the_head_complete() -> None:
    whole = request()
    read = read_simple(whole[:-3], LIMIT)
    assert (read.reading, read.head_complete) == (Reading.PARTIAL, True)


@pytest.mark.parametrize(
    "data",
    [
        request(line=b"GET /v1/chat/completions HTTP/1.1"),
        request(line=b"POST /v1/chat/completions HTTP/1.0"),
        request(line=b"post /v1/chat/completions HTTP/1.1"),
        request(line=b"POST /v1/chat/completions?x=1 HTTP/1.1"),
        request(line=b"POST /v1/../v1/chat/completions HTTP/1.1"),
        request(line=b"POST /health HTTP/1.1"),
        request(line=b"POST /v1/audio/transcriptions HTTP/1.1"),  # a form, not JSON
        request(line=b"POST  /v1/chat/completions HTTP/1.1"),
        request(line=b"POST http://x/v1/chat/completions HTTP/1.1"),
        request(b"Host: x", b"Transfer-Encoding: chunked"),
        request(b"Host: x", b"Expect: 100-continue"),
        request(b"Host: x", b"Upgrade: websocket"),
        request(b"Host: x", b"Connection: close"),
        request(b"Host: x", b"Connection: keep-alive, Upgrade"),
        request(b"Host: x", b"Content-Length: 30", b"Content-Length: 30"),
        request(b"Host: x", b"Content-Length: +30"),
        request(b"Host: x", b"Content-Length: 0x1e"),
        request(b"Host : x"),  # space before the colon
        request(b" Host: x"),  # obs-fold
        request(b"Host x"),  # no colon
        request(b"H\x00st: x"),
        request(b"Host: x\x00"),
        request(b"Host: caf\xc3\xa9"),  # not ASCII
        request(b"Host: x\x7f"),
        request(b"Host: x") + b"POST /v1/completions HTTP/1.1\r\n",  # pipelined bytes behind
        b"GET / HTTP/1.1\r\n",
        b"PUT /",
        b"\x16\x03\x01\x02\x00",  # a TLS hello
        b"POST /" + b"x" * MAX_SIMPLE_HEAD,
    ],
)
def test_anything_else_goes_to_aiohttp(data: bytes) -> None:
    assert read_simple(data, LIMIT).reading is Reading.OTHER


def test_a_request_without_a_content_length_goes_to_aiohttp() -> None:
    data = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n"
    assert read_simple(data, LIMIT).reading is Reading.OTHER


def test_too_many_headers_or_too_long_a_head_go_to_aiohttp() -> None:
    many = [b"X-%d: y" % n for n in range(MAX_SIMPLE_HEADERS + 1)]
    assert read_simple(request(*many), LIMIT).reading is Reading.OTHER
    long_value = b"X: " + b"y" * MAX_SIMPLE_HEAD
    assert read_simple(request(long_value), LIMIT).reading is Reading.OTHER


def test_a_body_over_the_limit_goes_to_aiohttp_before_it_arrives() -> None:
    data = request(body=b"x" * 100)
    assert read_simple(data, 99).reading is Reading.OTHER
    assert read_simple(data[:-50], 99).reading is Reading.OTHER
    assert read_simple(data, 100).reading is Reading.SIMPLE


@pytest.mark.parametrize(
    ("value", "json"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/json ;charset=utf-8", True),
        ("text/plain", False),
        ("application/jsonx", False),
        ("multipart/form-data; boundary=x", False),
    ],
)
def test_the_json_media_type(value: str, json: bool) -> None:
    read = read_simple(request(b"Content-Type: " + value.encode()), LIMIT)
    assert read.request is not None
    assert json_media_type(read.request.headers) is json


def test_no_content_type_is_not_json() -> None:
    read = read_simple(request(b"Host: x"), LIMIT)
    assert read.request is not None
    assert not json_media_type(read.request.headers)
