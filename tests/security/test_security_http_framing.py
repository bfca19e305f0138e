"""Broken HTTP framing on every listener of the real daemon: raw bytes no client library
would send, refused by aiohttp's parser before any app sees them.

Properties, on the proxy, admin and metrics ports alike:
- header fields too large (one long line, or too many) are a 431, a request line too long
  a 414, any other framing fault (Content-Length with Transfer-Encoding, two different
  Content-Lengths, a bad chunk, bytes that are not HTTP) a 400 — each in the OpenAI error
  shape, never aiohttp's text/plain, and the connection is closed;
- a chunked body is read like any other (served, or a 413 past the limit);
- a body that ends early leaves the daemon serving;
- each refusal is one warning line with no traceback.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.support.daemon import RunningDaemon
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

CHAT = b"/v1/chat/completions"
BODY = b'{"model": "a", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}'
#: aiohttp's limits: 8190 bytes per line (request line or header field), 128 headers.
LINE_LIMIT = 8190
REFUSALS: dict[str, tuple[bytes, int, str]] = {
    "header_value_too_long": (b"X-Big: " + b"v" * (LINE_LIMIT + 10) + b"\r\n", 431, ""),
    "header_name_too_long": (b"X-" + b"n" * (LINE_LIMIT + 10) + b": v\r\n", 431, ""),
    "too_many_headers": (b"".join(b"X-H%d: v\r\n" % i for i in range(200)), 431, ""),
    "content_length_with_transfer_encoding": (
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        400,
        "Transfer-Encoding",
    ),
    "two_different_content_lengths": (b"Content-Length: 2\r\nContent-Length: 3\r\n", 400, ""),
    "unknown_transfer_encoding": (b"Transfer-Encoding: gzip\r\n", 400, ""),
    "nul_in_a_header_value": (b"X-Nul: a\x00b\r\n", 400, ""),
    "obsolete_line_folding": (b"X-Fold: a\r\n b\r\n", 400, ""),
    "negative_content_length": (b"Content-Length: -1\r\n", 400, ""),
}


def exchange(port: int, data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send raw bytes; everything the server sends until it closes (or the deadline)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                piece = sock.recv(65536)
            except TimeoutError:
                break
            if not piece:
                break
            received += piece
        return received


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def assert_openai_refusal(answer: bytes, status: int, contains: str = "") -> dict[str, object]:
    got, headers, body = parse(answer)
    assert got == status, answer[:300]
    assert headers["content-type"].startswith("application/json"), answer[:300]
    error: dict[str, object] = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert contains in str(error["message"]), error
    return error


def ports(daemon: RunningDaemon) -> dict[str, int]:
    config = daemon.config
    return {
        "proxy": config["port"],
        "admin": config["admin_port"],
        "metrics": config["metrics_port"],
    }


@pytest.mark.parametrize("listener", ["proxy", "admin", "metrics"])
@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_framing_faults_are_refused_in_the_api_shape(
    fuzz_daemon: RunningDaemon, listener: str, name: str
) -> None:
    headers, status, contains = REFUSALS[name]
    port = ports(fuzz_daemon)[listener]
    request = b"POST " + CHAT + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    answer = exchange(port, request + headers + b"\r\n" + BODY)
    assert_openai_refusal(answer, status, contains)


@pytest.mark.parametrize("listener", ["proxy", "admin", "metrics"])
def test_request_line_too_long_is_414_and_not_http_is_400(
    fuzz_daemon: RunningDaemon, listener: str
) -> None:
    port = ports(fuzz_daemon)[listener]
    long_target = b"/v1/chat/completions?q=" + b"q" * (LINE_LIMIT + 10)
    answer = exchange(port, b"GET " + long_target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_openai_refusal(answer, 414)
    tls_client_hello = bytes.fromhex("16030100a5010000a10303") + b"\x00" * 64
    assert_openai_refusal(exchange(port, tls_client_hello), 400)


def _chunked(body: bytes, size: int = 7) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def test_chunked_bodies_are_read_like_any_other(fuzz_daemon: RunningDaemon) -> None:
    port = fuzz_daemon.config["port"]
    head = b"POST " + CHAT + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    status, _, body = parse(exchange(port, head + _chunked(BODY)))
    assert status == 200, body[:300]
    padded = b'{"model": "a", "pad": "' + b"x" * (300 * 1024) + b'"}'
    assert_openai_refusal(exchange(port, head + _chunked(padded, 65536)), 413)
    assert_openai_refusal(exchange(port, head + b"zz\r\nabc\r\n0\r\n\r\n"), 400)
    deep = b'{"model": "a", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    error = assert_openai_refusal(exchange(port, head + _chunked(deep, 999)), 400)
    assert error["code"] == "invalid_json"


@pytest.mark.parametrize("listener", ["proxy", "admin"])
def test_a_body_that_ends_early_leaves_the_daemon_serving(
    fuzz_daemon: RunningDaemon, listener: str
) -> None:
    port = ports(fuzz_daemon)[listener]
    path = CHAT if listener == "proxy" else b"/api/switch"
    for framing in (b"Content-Length: 1000\r\n\r\n", b"Transfer-Encoding: chunked\r\n\r\n40\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + framing + b'{"model":')
            time.sleep(0.2)  # the handler is now waiting for the rest; the client leaves
    answer = exchange(
        fuzz_daemon.config["port"], b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=2
    )
    assert parse(answer)[0] == 200


def test_refusals_are_one_warning_line_each_without_a_traceback(
    fuzz_daemon: RunningDaemon,
) -> None:
    """Runs after the tests above (pytest keeps file order)."""
    expected = 3 * len(REFUSALS) + 3 * 2 + 1  # each listener's refusals, 414 + 400, bad chunk

    def refusals() -> list[dict[str, object]]:
        events = fuzz_daemon.log_events()
        return [e for e in events if e.get("event") == "http_request_refused"]

    wait_until(lambda: len(refusals()) >= expected, timeout=10, what="the refusal lines")
    assert len(refusals()) == expected
    assert all(e["level"] == "warning" for e in refusals())
    assert not [e for e in fuzz_daemon.log_events() if "exception" in e]
    assert fuzz_daemon.process.poll() is None


def test_the_proxy_port_answers_every_method_and_path_itself(fuzz_daemon: RunningDaemon) -> None:
    """The proxy port has no router (`http/listener.BareHandler`): what aiohttp's router
    did there (100-continue, 417, HEAD, paths no route matches) the proxy does, in its
    error shape. Runs after the refusal count above: none of these is a parser refusal."""
    port = fuzz_daemon.config["port"]
    head = b"POST " + CHAT + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Connection: close\r\nContent-Length: %d\r\n" % len(BODY)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + b"Expect: 100-continue\r\n\r\n")
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):  # the body is held back until it comes
            piece = sock.recv(1)
            assert piece, interim
            interim += piece
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(BODY)
        rest = b""
        while piece := sock.recv(65536):
            rest += piece
    status, _, body = parse(rest)
    assert status == 200, body[:300]
    assert json.loads(body)["object"] == "chat.completion"
    error = assert_openai_refusal(exchange(port, head + b"Expect: magic\r\n\r\n" + BODY), 417)
    assert error["code"] == "expectation_failed"
    for page in (b"/health", b"/v1/models"):
        status, headers, body = parse(
            exchange(port, b"HEAD " + page + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        )
        assert (status, body) == (200, b"")
        assert int(headers["content-length"]) > 0  # the length GET's body would have
    close = b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    for line, code in (
        (b"OPTIONS *", "not_found"),
        (b"CONNECT 127.0.0.1:443", "not_found"),
        (b"POST /health", "not_found"),
        (b"GET http://127.0.0.1/health", "not_found"),  # routes match the raw target
        (b"DELETE /v1/models", "not_found"),
        (b"PUT " + CHAT, "method_not_allowed"),
    ):
        answer = exchange(port, line + close)
        error = assert_openai_refusal(answer, 405 if code == "method_not_allowed" else 404)
        assert error["code"] == code, (line, error)
    # Anthropic's routes answer in Anthropic's shape, refusals of the expectation included.
    messages = b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    messages += b"Connection: close\r\nContent-Length: 2\r\nExpect: magic\r\n\r\n{}"
    status, _, body = parse(exchange(port, messages))
    assert status == 417
    assert json.loads(body)["type"] == "error"
