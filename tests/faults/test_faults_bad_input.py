"""Bad input and passthrough fidelity (ecosystem §4 cases 1–10) through the real daemon.

The status codes of each client error are covered by
tests/integration/test_daemon_proxy.py::test_each_client_error_status; here the point is
what a rejected request must *not* do (reach a backend, start a switch), how the server
copes with abusive headers and slow clients, and that what it forwards is byte for byte
what the backend sent (and, with the echo backend, that hop-by-hop headers are dropped).
"""

from __future__ import annotations

import http.client
import json
import re
import select
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.admin import Admin, EventStream
from tests.support.backend import backend_state, event_names
from tests.support.client import (
    CHAT,
    Reply,
    assert_openai_error,
    chat_body,
    get_json,
    post,
    post_json,
    request,
)
from tests.support.daemon import RunningDaemon, mock_model, running_daemon
from tests.support.echo_backend import ECHO_COMMAND
from tests.support.metrics import metric_value
from tests.support.ports import free_port
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

_CREATED = re.compile(rb'"created": ?\d+')


def same_but_created(a: bytes, b: bytes) -> bool:
    """Equal once the `created` timestamps (whole seconds, may tick between) are blanked."""
    return _CREATED.sub(b'"created":0', a) == _CREATED.sub(b'"created":0', b)


def test_rejected_requests_never_reach_a_backend_or_start_a_switch(tmp_path: Path) -> None:
    """Cases 1–3, 5: malformed JSON, a bad `model`, an unknown model and a non-JSON body are
    answered by gpumux alone: no backend sees them, no model starts, no switch begins."""
    models = {"a": mock_model(), "b": mock_model()}
    with running_daemon(tmp_path, models) as daemon:
        assert post(daemon, CHAT, chat_body("a")).status == 200
        models_before = get_json(daemon.url + "/v1/models")["data"]
        seen_before = event_names(daemon, "a").count("request")
        cases: list[tuple[bytes, dict[str, str], int, str]] = [
            (b'{"model": "b", "messages": [', {}, 400, "invalid_json"),
            (b'["model", "b"]', {}, 400, "invalid_json"),
            (b'{"model": ["b"]}', {}, 400, "missing_model"),
            (b'{"model": ""}', {}, 400, "missing_model"),
            (chat_body("nope"), {}, 404, "model_not_found"),
            (chat_body("b"), {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
            (b'{"model": "b"}', {"Content-Type": "application/x-www-form-urlencoded"}, 415, ""),
        ]
        for body, headers, status, code in cases:
            reply = post(daemon, CHAT, body, headers=headers)
            assert_openai_error(reply, status, code or None)
        time.sleep(0.3)  # anything wrongly started would be under way by now
        assert event_names(daemon, "a").count("request") == seen_before
        assert metric_value(daemon, "gpumux_model_state", model="b", state="stopped") == 1
        assert metric_value(daemon, "gpumux_model_state", model="a", state="ready") == 1
        assert metric_value(daemon, "gpumux_switches_total", to="b", outcome="ok") == 0
        assert not [e for e in daemon.log_events() if e.get("event") == "switch_started"][1:]
        assert get_json(daemon.url + "/v1/models")["data"] == models_before


def _raw_exchange(port: int, head: bytes, timeout: float = 10.0) -> bytes:
    """Send raw request bytes and read until the server closes or answers one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
        return data


def test_oversized_or_too_many_headers_are_refused_and_the_daemon_keeps_serving(
    tmp_path: Path,
) -> None:
    """Case 8 (size): an 64 KiB header, a 64 KiB request line and 300 headers are refused
    with a 4xx (or the connection is closed); the daemon keeps serving."""
    with running_daemon(tmp_path, {"a": mock_model()}) as daemon:
        port = daemon.config["port"]
        body = chat_body()
        length = f"Content-Length: {len(body)}\r\n".encode()
        big_header = b"X-Big: " + b"x" * 65536 + b"\r\n"
        many = b"".join(f"X-H{i}: v\r\n".encode() for i in range(300))
        attempts = {
            "big header": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + big_header,
            "long line": b"POST /v1/chat/completions?" + b"q" * 65536 + b" HTTP/1.1\r\nHost: x\r\n",
            "many headers": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + many,
        }
        for name, head in attempts.items():
            answer = _raw_exchange(
                port, head + b"Content-Type: application/json\r\n" + length + b"\r\n" + body
            )
            status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
            assert status is None or status in (400, 413, 414, 431), (name, answer[:200])
        assert post(daemon, CHAT, chat_body()).status == 200


#: `header_timeout_secs` for the slowloris tests: short, so the suite stays quick.
HEAD_TIMEOUT = 1.0
#: How late past the deadline a close may be seen on a loaded 2-core machine.
CLOSE_SLACK = 3.0
#: How often a loris sends one more header byte (so its connection is never idle).
TRICKLE_SECS = 0.2
SLOW_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: "


class Lorises:
    """Raw connections that trickle a header byte every `TRICKLE_SECS` and never finish
    the head; notes, per connection, how long after it opened the server closed it."""

    def __init__(self, port: int, count: int) -> None:
        self.socks: list[socket.socket] = []
        self.opened: list[float] = []
        self.closed_after: dict[int, float] = {}
        self.answered: dict[int, bytes] = {}
        for _ in range(count):
            self.socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            self.opened.append(time.monotonic())
        self._stop = threading.Event()
        self._feeder = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Lorises:
        self._feeder.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._feeder.join(timeout=5)
        for sock in self.socks:
            sock.close()

    def all_closed(self) -> bool:
        return len(self.closed_after) == len(self.socks)

    def _open(self) -> list[int]:
        return [i for i in range(len(self.socks)) if i not in self.closed_after]

    def _run(self) -> None:
        for sock in self.socks:
            sock.sendall(SLOW_HEAD)
        next_byte = time.monotonic() + TRICKLE_SECS
        while not self._stop.is_set() and not self.all_closed():
            # select() wakes as soon as a connection is closed, so close times are exact.
            wait = max(0.0, next_byte - time.monotonic())
            readable, _, _ = select.select([self.socks[i] for i in self._open()], [], [], wait)
            for sock in readable:
                self._note_end(self.socks.index(sock))
            if time.monotonic() >= next_byte:
                next_byte += TRICKLE_SECS
                for i in self._open():
                    try:
                        self.socks[i].sendall(b"z")
                    except OSError:
                        self._note_end(i)

    def _note_end(self, i: int) -> None:
        try:
            data = self.socks[i].recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # reset: closed as well
        if data:
            self.answered[i] = data
        self.closed_after.setdefault(i, time.monotonic() - self.opened[i])


def _assert_closed_in_time(lorises: Lorises) -> None:
    assert not lorises.answered, lorises.answered  # closed without a reply, never served
    assert lorises.all_closed(), f"still open: {len(lorises.socks) - len(lorises.closed_after)}"
    times = sorted(lorises.closed_after.values())
    # Never before the deadline (it runs from the open, not from the last byte)...
    assert times[0] >= HEAD_TIMEOUT * 0.9, times
    # ...and not much after it, although every loris kept sending bytes.
    assert times[-1] <= HEAD_TIMEOUT + CLOSE_SLACK, times
    print(f"slowloris closed after {times[0]:.3f}..{times[-1]:.3f} s (timeout {HEAD_TIMEOUT} s)")


def _closed_lines(daemon: RunningDaemon) -> list[dict[str, Any]]:
    return [e for e in daemon.log_events() if e.get("event") == "header_timeout_closed"]


def test_slowloris_connections_are_closed_after_the_header_timeout_and_others_are_served(
    tmp_path: Path,
) -> None:
    """Case 8 (slowloris): with `header_timeout_secs` 1, 20 connections trickling a header
    byte every 0.2 s (never idle) are closed about 1 s after they opened, while ordinary
    requests from another client are answered throughout, each in well under a second.
    One log line per closed connection names the peer and never a header."""
    models = {"a": mock_model()}
    with running_daemon(tmp_path, models, header_timeout_secs=HEAD_TIMEOUT) as daemon:
        port = daemon.config["port"]
        assert post(daemon, CHAT, chat_body()).status == 200
        served = 0
        with Lorises(port, 20) as lorises:
            deadline = time.monotonic() + HEAD_TIMEOUT + CLOSE_SLACK + 5
            while not lorises.all_closed() and time.monotonic() < deadline:
                reply = post(daemon, CHAT, chat_body(), timeout=5)
                assert reply.status == 200
                assert reply.elapsed < 1.0, reply.elapsed
                served += 1
        _assert_closed_in_time(lorises)
        assert served >= 3, served  # ordinary requests were served while the lorises hung on
        assert post(daemon, CHAT, chat_body()).status == 200

        def all_closed() -> list[dict[str, Any]]:
            lines = _closed_lines(daemon)
            return lines if len(lines) >= 20 else []

        closed = wait_until(all_closed, what="one log line per closed connection")
        assert len(closed) == 20, closed
        assert all(e["peer"].startswith("127.0.0.1:") for e in closed), closed
        assert {e["head_bytes"] > len(SLOW_HEAD) for e in closed} == {True}, closed
        assert b"X-Slow" not in daemon.log_path.read_bytes()


def test_header_timeout_spares_streams_slow_bodies_queued_requests_and_idle_keepalive(
    tmp_path: Path,
) -> None:
    """Case 8, what the header timeout must never cut (`header_timeout_secs` 1): a stream
    lasting twice as long, a body trickled in for over two seconds after a complete head,
    a request queued behind a model switch for longer than the timeout, and a kept-alive
    connection idle for twice the timeout whose next request then arrives at once."""
    models = {
        "a": mock_model(extra_args=["--mock-tokens-per-sec", "10"]),
        "b": mock_model(extra_args=["--mock-startup-secs", "2.5"]),
    }
    with running_daemon(tmp_path, models, header_timeout_secs=HEAD_TIMEOUT) as daemon:
        port = daemon.config["port"]
        assert post(daemon, CHAT, chat_body(max_tokens=1)).status == 200

        stream = post(daemon, CHAT, chat_body(stream=True, max_tokens=20))
        assert stream.status == 200
        assert stream.body.endswith(b"data: [DONE]\n\n"), stream.body[-200:]
        assert stream.elapsed > HEAD_TIMEOUT * 1.5, stream.elapsed

        body = chat_body(max_tokens=1)
        head = (
            f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(head)
            started = time.monotonic()
            step = max(1, len(body) // 12)
            for offset in range(0, len(body), step):
                time.sleep(
                    TRICKLE_SECS
                )  # the point of the test: a body slower than the head deadline
                sock.sendall(body[offset : offset + step])
            assert time.monotonic() - started > HEAD_TIMEOUT * 2
            answer = b""
            while piece := sock.recv(65536):
                answer += piece
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]

        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            kept.request("GET", "/v1/models")
            assert kept.getresponse().read()
            assert kept.sock is not None
            local = kept.sock.getsockname()
            time.sleep(HEAD_TIMEOUT * 2)  # idle past the deadline: left to keep-alive
            kept.request("GET", "/v1/models")
            response = kept.getresponse()
            assert response.status == 200
            response.read()
            assert kept.sock is not None
            assert kept.sock.getsockname() == local  # the same connection served it
        finally:
            kept.close()

        queued = post(daemon, CHAT, chat_body("b", max_tokens=1))  # evicts a, cold-starts b
        assert queued.status == 200, queued.body[:300]
        assert queued.elapsed > HEAD_TIMEOUT * 2, queued.elapsed
        assert not _closed_lines(daemon)


def test_admin_and_metrics_ports_close_slowloris_connections_too(tmp_path: Path) -> None:
    """Case 8 on the other listeners: lorises on the admin and metrics ports are closed
    after `header_timeout_secs`, while the admin API answers and an event stream opened
    before them outlives the deadline."""
    token = "admin-token-loris"
    with running_daemon(
        tmp_path,
        {"a": mock_model()},
        env={"GPUMUX_TEST_ADMIN": token},
        admin_port=free_port(),
        admin_token_env="GPUMUX_TEST_ADMIN",
        header_timeout_secs=HEAD_TIMEOUT,
    ) as daemon:
        admin = Admin(daemon, token)
        stream = EventStream(admin, replay=0)
        try:
            ports = [daemon.config["admin_port"], daemon.config["metrics_port"]]
            with Lorises(ports[0], 5) as on_admin, Lorises(ports[1], 5) as on_metrics:
                wait_until(
                    lambda: on_admin.all_closed() and on_metrics.all_closed(),
                    timeout=HEAD_TIMEOUT + CLOSE_SLACK + 5,
                    what="lorises on the admin and metrics ports closed",
                )
                assert admin.status()["models"]["a"]["state"] in ("stopped", "ready")
            _assert_closed_in_time(on_admin)
            _assert_closed_in_time(on_metrics)
            assert post(daemon, CHAT, chat_body()).status == 200  # starts a: events on the stream
            stream.wait_for(lambda e: e["event"] == "state_changed" and e["model"] == "a")
        finally:
            stream.close()


def test_stream_bytes_keepalive_comments_usage_and_done_pass_through_unchanged(
    tmp_path: Path,
) -> None:
    """Case 9: a proxied stream is the backend's stream byte for byte (same request id, so
    only `created` may differ), `: keep-alive` comments and the usage chunk included."""
    model = mock_model(extra_args=["--mock-sse-keepalive-secs", "0.1"])
    body = chat_body(stream=True, max_tokens=5, stream_options={"include_usage": True})
    with running_daemon(tmp_path, {"a": model}) as daemon:
        assert post(daemon, CHAT, chat_body()).status == 200
        rid = {"X-Request-Id": "fault-suite-9"}
        proxied = post(daemon, CHAT, body, headers=rid)
        direct = request(daemon.config["models"]["a"]["port"], CHAT, body, headers=rid)
        assert proxied.status == direct.status == 200
        assert proxied.headers["content-type"] == direct.headers["content-type"]
        assert proxied.headers["content-type"].startswith("text/event-stream")
        assert same_but_created(proxied.body, direct.body), (proxied.body, direct.body)
        assert b'"usage"' in proxied.body
        assert proxied.body.endswith(b"data: [DONE]\n\n")

        # Keep-alive comments: the backend sends them while a request waits in its own
        # queue (here: asleep, put to sleep behind gpumux's back, then woken up).
        post_json(daemon.backend_url("a") + "/sleep?level=1&mode=wait", {})
        replies: list[Reply] = []
        waiter = threading.Thread(target=lambda: replies.append(post(daemon, CHAT, body)))
        waiter.start()
        wait_until(lambda: backend_state(daemon, "a")["waiting"] == 1, what="queued asleep")
        time.sleep(0.35)
        post_json(daemon.backend_url("a") + "/wake_up", {})
        waiter.join(timeout=20)
        streamed = replies[0]
        assert streamed.status == 200
        assert streamed.body.startswith(b": keep-alive\n\n"), streamed.body[:100]
        assert streamed.body.count(b": keep-alive\n\n") >= 2
        assert b'"usage"' in streamed.body
        assert streamed.body.endswith(b"data: [DONE]\n\n")


def _echo_daemon(tmp_path: Path, **top: Any) -> Any:
    model = mock_model()
    model["extra_args"] = []
    return running_daemon(
        tmp_path,
        {"e": model},
        vllm_command=list(ECHO_COMMAND),
        **top,
    )


def test_non_streaming_body_status_and_type_pass_through_and_hop_by_hop_headers_do_not(
    tmp_path: Path,
) -> None:
    """Case 10: a non-streaming reply is the backend's bytes, status and content type; the
    request id is forwarded and echoed; hop-by-hop headers (RFC 9110 §7.6.1, including
    those a `Connection` header names) are dropped in both directions."""
    with running_daemon(tmp_path, {"a": mock_model()}) as daemon:
        assert post(daemon, CHAT, chat_body()).status == 200
        rid = {"X-Request-Id": "fault-suite-10"}
        for path, body in (
            (CHAT, chat_body(max_tokens=6)),
            ("/v1/completions", json.dumps({"model": "a", "prompt": "x y", "max_tokens": 4})),
            ("/v1/embeddings", json.dumps({"model": "a", "input": "hello"})),
        ):
            raw = body if isinstance(body, bytes) else body.encode()
            proxied = post(daemon, path, raw, headers=rid)
            direct = request(daemon.config["models"]["a"]["port"], path, raw, headers=rid)
            assert proxied.status == direct.status == 200, (path, proxied.body)
            assert proxied.headers["content-type"] == direct.headers["content-type"]
            assert same_but_created(proxied.body, direct.body), (path, proxied.body, direct.body)
            assert proxied.headers["x-request-id"] == "fault-suite-10"

    with _echo_daemon(tmp_path / "echo") as daemon:
        sent = {
            "Connection": "keep-alive, X-Client-Private",
            "X-Client-Private": "only-for-the-next-hop",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic c2VjcmV0",
            "Upgrade": "websocket",
            "X-Request-Id": "echo-1",
            "X-Client-Public": "kept",
        }
        reply = post(daemon, CHAT, chat_body("e"), headers=sent)
        assert reply.status == 200, reply.body
        mirror = reply.json()
        forwarded = {k.lower(): v for k, v in mirror["headers"]}
        for name in ("x-client-private", "keep-alive", "te", "proxy-authorization", "upgrade"):
            assert name not in forwarded, (name, forwarded)
        assert forwarded["x-client-public"] == "kept"
        assert forwarded["x-request-id"] == "echo-1"
        assert mirror["raw_path"] == CHAT
        assert reply.headers["x-backend-public"] == "kept"
        assert "x-backend-private" not in reply.headers, reply.headers
        assert "timeout=99" not in reply.headers.get("keep-alive", "")
