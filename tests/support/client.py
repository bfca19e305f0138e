"""HTTP as a test client sees it: one exchange with the daemon, JSON calls, error shapes.

Owns: `request`/`post` (one exchange over a fresh connection that returns whatever came
back, with when each body chunk arrived), the chat-completion body most tests send,
stdlib JSON GET/POST helpers, `http_status` (None when nothing answers), a raw socket
that sends a request and leaves the reply unread, raw replies read off a socket
(`parse_reply`, `exchange`), and the assertions on gpumux's
OpenAI-shaped errors (a JSON body, or an error event that ends a stream).
Does not: start anything (`tests.support.daemon` does) or use an HTTP library beyond
the stdlib, so a failing test shows the bytes the daemon actually sent.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.daemon import RunningDaemon

#: Every wait has a deadline; this is the default for one HTTP exchange.
HTTP_TIMEOUT_SECS = 30.0
CHAT = "/v1/chat/completions"


@dataclass
class Reply:
    """One HTTP exchange as the client saw it."""

    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float
    chunk_times: list[float] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


def chat_body(model: str = "a", **extra: Any) -> bytes:
    """A chat completion body (3 tokens unless `max_tokens` says otherwise)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
    }
    body.update(extra)
    return json.dumps(body).encode()


def request(
    port: int,
    path: str,
    body: bytes | None = None,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    timeout: float = HTTP_TIMEOUT_SECS,
) -> Reply:
    """Send one request to 127.0.0.1:`port` and read the whole reply, noting when each
    body chunk arrived (headers lower-cased)."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        chunks: list[bytes] = []
        times: list[float] = []
        while True:
            piece = response.read1(65536)
            if not piece:
                break
            chunks.append(piece)
            times.append(time.monotonic() - started)
        hdrs = {k.lower(): v for k, v in response.getheaders()}
        return Reply(response.status, hdrs, b"".join(chunks), time.monotonic() - started, times)
    finally:
        conn.close()


def post(
    daemon: RunningDaemon,
    path: str,
    body: bytes | None,
    *,
    timeout: float = HTTP_TIMEOUT_SECS,
    **kw: Any,
) -> Reply:
    """POST (or `method=`) `body` to the daemon's proxy port (see `request`)."""
    return request(daemon.config["port"], path, body, timeout=timeout, **kw)


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post_json(url: str, body: dict[str, Any], timeout: float = 5.0) -> Any:
    sent = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(sent, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """GET `url`; its status, or None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response's socket (a 503 while the daemon starts)
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def open_stream(daemon: RunningDaemon, body: bytes, path: str = CHAT) -> socket.socket:
    """Send a request on a raw socket and return it unread (the test decides when to
    read, stall or close)."""
    sock = socket.create_connection(("127.0.0.1", daemon.config["port"]), timeout=15)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


@dataclass
class RawReply:
    """One HTTP/1.1 reply as it came off a socket: the headers in the order sent."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes  # chunked framing removed
    raw: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def parse_reply(buffer: bytes) -> tuple[RawReply, bytes] | None:
    """The first whole reply in `buffer` and the bytes after it; None while incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buffer[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    names = {k.lower(): v for k, v in headers}
    at = end + 4
    if "content-length" in names:
        stop = at + int(names["content-length"])
        if len(buffer) < stop:
            return None
        return RawReply(status, headers, buffer[at:stop], buffer[:stop]), buffer[stop:]
    if names.get("transfer-encoding", "").lower() != "chunked":
        return RawReply(status, headers, b"", buffer[:at]), buffer[at:]
    body = b""
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size, start = int(buffer[at:line_end], 16), line_end + 2
        if len(buffer) < start + size + 2:
            return None
        if size == 0:
            return RawReply(status, headers, body, buffer[: start + 2]), buffer[start + 2 :]
        body += buffer[start : start + size]
        at = start + size + 2


def exchange(sock: socket.socket, data: bytes, timeout: float = HTTP_TIMEOUT_SECS) -> RawReply:
    """Send `data` on `sock` and read one whole reply (nothing may follow it)."""
    sock.settimeout(timeout)
    sock.sendall(data)
    buffer = b""
    while (parsed := parse_reply(buffer)) is None:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError(f"closed mid-reply after {buffer[:200]!r}")
        buffer += piece
    reply, rest = parsed
    assert rest == b"", rest[:200]
    return reply


def raw_post(path: str, body: bytes, *headers: str) -> bytes:
    """A POST's bytes, in the plainest form: Host, Content-Type JSON, `headers`, length."""
    head = [f"POST {path} HTTP/1.1", "Host: x", "Content-Type: application/json", *headers]
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# ---- gpumux's OpenAI-shaped errors --------------------------------------------------------


def assert_error_shape(body: Any, code: str | None = None) -> dict[str, Any]:
    """`body` is `{"error": {message, type, param, code}}` with a message (and `code`)."""
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str)
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def assert_openai_error(reply: Reply, status: int, code: str | None = None) -> dict[str, Any]:
    """The reply is an OpenAI-shaped JSON error with this status (and code)."""
    assert reply.status == status, (reply.status, reply.body[:500])
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    return assert_error_shape(reply.json(), code)


def sse_error(body: bytes) -> dict[str, Any] | None:
    """The `error` object of the first error event in an SSE body, if any."""
    for line in body.split(b"\n"):
        if line.startswith(b"data: {") and b'"error"' in line:
            found: dict[str, Any] = json.loads(line[len(b"data: ") :])["error"]
            return found
    return None


def assert_failed_stream(reply: Reply, code: str) -> None:
    """A stream that failed: 200, an error event with `code`, then `[DONE]` (never a clean EOF)."""
    assert reply.status == 200, reply.body[:500]
    error = sse_error(reply.body)
    assert error is not None, reply.body[-500:]
    assert_error_shape({"error": error}, code)
    assert reply.body.endswith(b"data: [DONE]\n\n"), reply.body[-200:]


def stream_times(port: int, body: bytes, out: list[Any]) -> None:
    """POST a streaming chat; record (arrival time, chunk) for every chunk read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    out.append(response.status)
    while chunk := response.read1(65536):
        out.append((time.monotonic(), chunk))
    conn.close()


def model_ids(daemon: Any) -> set[str]:
    """The ids `/v1/models` lists."""
    return {m["id"] for m in get_json(daemon.url + "/v1/models")["data"]}
