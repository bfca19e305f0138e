"""Bad input and passthrough fidelity (ecosystem §4 cases 1–10) through the real daemon.

The status codes of each client error are covered by
tests/integration/test_daemon_proxy.py::test_each_client_error_status; here the point is
what a rejected request must *not* do (reach a backend, start a switch), how the server
copes with abusive headers and slow clients, and that what it forwards is byte for byte
what the backend sent (and, with the echo backend, that hop-by-hop headers are dropped).
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.support import (
    Reply,
    assert_openai_error,
    backend_state,
    chat,
    event_names,
    post,
    request,
)
from tests.support.daemon import (
    get_json,
    metric_value,
    mock_model,
    post_json,
    running_daemon,
    wait_until,
)

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
ECHO_BACKEND = Path(__file__).with_name("echo_backend.py")
_CREATED = re.compile(rb'"created": ?\d+')


def same_but_created(a: bytes, b: bytes) -> bool:
    """Equal once the `created` timestamps (whole seconds, may tick between) are blanked."""
    return _CREATED.sub(b'"created":0', a) == _CREATED.sub(b'"created":0', b)


def test_rejected_requests_never_reach_a_backend_or_start_a_switch(tmp_path: Path) -> None:
    """Cases 1–3, 5: malformed JSON, a bad `model`, an unknown model and a non-JSON body are
    answered by gpumux alone: no backend sees them, no model starts, no switch begins."""
    models = {"a": mock_model(), "b": mock_model()}
    with running_daemon(tmp_path, models) as daemon:
        assert post(daemon, CHAT, chat("a")).status == 200
        models_before = get_json(daemon.url + "/v1/models")["data"]
        seen_before = event_names(daemon, "a").count("request")
        cases: list[tuple[bytes, dict[str, str], int, str]] = [
            (b'{"model": "b", "messages": [', {}, 400, "invalid_json"),
            (b'["model", "b"]', {}, 400, "invalid_json"),
            (b'{"model": ["b"]}', {}, 400, "missing_model"),
            (b'{"model": ""}', {}, 400, "missing_model"),
            (chat("nope"), {}, 404, "model_not_found"),
            (chat("b"), {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
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
        body = chat()
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
        assert post(daemon, CHAT, chat()).status == 200


def test_slow_header_clients_do_not_starve_other_clients(tmp_path: Path) -> None:
    """Case 8 (slowloris): 40 connections trickling their headers byte by byte do not slow
    ordinary requests down (each is still answered in well under a second)."""
    with running_daemon(tmp_path, {"a": mock_model()}) as daemon:
        port = daemon.config["port"]
        assert post(daemon, CHAT, chat()).status == 200
        stop = threading.Event()
        lorises = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]

        def trickle() -> None:
            head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: "
            for sock in lorises:
                sock.sendall(head)
            while not stop.wait(0.1):
                for sock in lorises:
                    try:
                        sock.sendall(b"z")
                    except OSError:
                        continue

        feeder = threading.Thread(target=trickle, daemon=True)
        feeder.start()
        try:
            time.sleep(0.3)
            for _ in range(10):
                reply = post(daemon, CHAT, chat(), timeout=5)
                assert reply.status == 200
                assert reply.elapsed < 1.0, reply.elapsed
        finally:
            stop.set()
            feeder.join(timeout=5)
            for sock in lorises:
                sock.close()


def test_stream_bytes_keepalive_comments_usage_and_done_pass_through_unchanged(
    tmp_path: Path,
) -> None:
    """Case 9: a proxied stream is the backend's stream byte for byte (same request id, so
    only `created` may differ), `: keep-alive` comments and the usage chunk included."""
    model = mock_model(extra_args=["--mock-sse-keepalive-secs", "0.1"])
    body = chat(stream=True, max_tokens=5, stream_options={"include_usage": True})
    with running_daemon(tmp_path, {"a": model}) as daemon:
        assert post(daemon, CHAT, chat()).status == 200
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
        vllm_command=[sys.executable, str(ECHO_BACKEND)],
        **top,
    )


def test_non_streaming_body_status_and_type_pass_through_and_hop_by_hop_headers_do_not(
    tmp_path: Path,
) -> None:
    """Case 10: a non-streaming reply is the backend's bytes, status and content type; the
    request id is forwarded and echoed; hop-by-hop headers (RFC 9110 §7.6.1, including
    those a `Connection` header names) are dropped in both directions."""
    with running_daemon(tmp_path, {"a": mock_model()}) as daemon:
        assert post(daemon, CHAT, chat()).status == 200
        rid = {"X-Request-Id": "fault-suite-10"}
        for path, body in (
            (CHAT, chat(max_tokens=6)),
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
        reply = post(daemon, CHAT, chat("e"), headers=sent)
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
