"""The proxy contract through the real daemon: streaming, errors, disconnects, crashes."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.daemon import (
    RunningDaemon,
    get_json,
    metric_value,
    mock_model,
    post_json,
    running_daemon,
    wait_until,
)

pytestmark = pytest.mark.integration


def raw_post(
    daemon: RunningDaemon,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.config["port"], timeout=30)
    try:
        conn.request(
            method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})}
        )
        response = conn.getresponse()
        payload = response.read()
        hdrs = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    try:
        parsed: Any = json.loads(payload)
    except ValueError:
        parsed = payload
    return response.status, hdrs, parsed


def chat_body(model: str = "a", **extra: Any) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, **extra}
    ).encode()


def assert_openai_error(body: Any, code: str) -> None:
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]


def test_streaming_passes_chunks_usage_and_done(tmp_path: Path) -> None:
    slow = ["--mock-tokens-per-sec", "20"]
    with running_daemon(tmp_path, {"a": mock_model(extra_args=slow)}) as daemon:
        with openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0) as sdk:
            stream = sdk.chat.completions.create(
                model="a",
                messages=[{"role": "user", "content": "count"}],
                max_tokens=6,
                stream=True,
                stream_options={"include_usage": True},
            )
            arrivals, text, usage = [], "", None
            for chunk in stream:
                arrivals.append(time.monotonic())
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                if chunk.usage:
                    usage = chunk.usage
        assert text
        assert usage is not None
        assert usage.completion_tokens == 6
        # Incremental: at 20 tokens/s the chunks are spread out, not delivered at once.
        assert arrivals[-1] - arrivals[0] > 0.15
        # Byte-level: the raw stream ends with [DONE].
        status, _, body = raw_post(daemon, "/v1/chat/completions", chat_body(stream=True))
        assert status == 200
        assert body.endswith(b"data: [DONE]\n\n")


def test_non_streaming_body_is_passed_through_and_request_id_echoed(tmp_path: Path) -> None:
    with running_daemon(tmp_path, {"a": mock_model()}) as daemon:
        status, headers, body = raw_post(
            daemon,
            "/v1/completions",
            json.dumps({"model": "a", "prompt": "x", "max_tokens": 2}).encode(),
            {"X-Request-Id": "req-123"},
        )
        assert status == 200
        assert headers["x-request-id"] == "req-123"
        assert body["object"] == "text_completion"
        seen = [
            e
            for e in get_json(daemon.backend_url("a") + "/mock/events")["events"]
            if e["event"] == "request"
        ]
        assert seen[-1]["request_id"] == "req-123"  # forwarded to the backend
        status, headers, _ = raw_post(daemon, "/v1/completions", b'{"model": "a", "prompt": "x"}')
        assert headers.get("x-request-id")  # generated when absent


def test_each_client_error_status(tmp_path: Path) -> None:
    models = {"a": mock_model()}
    with running_daemon(tmp_path, models, max_request_body_bytes=4096) as daemon:
        status, _, body = raw_post(daemon, "/v1/chat/completions", b"{not json")
        assert status == 400
        assert body["error"]["code"] == "invalid_json"
        status, _, body = raw_post(daemon, "/v1/chat/completions", b'{"messages": []}')
        assert status == 400
        assert body["error"]["param"] == "model"
        status, _, body = raw_post(daemon, "/v1/chat/completions", b'{"model": 7}')
        assert status == 400
        assert body["error"]["param"] == "model"
        status, _, body = raw_post(daemon, "/v1/chat/completions", chat_body("nope"))
        assert status == 404
        assert_openai_error(body, "model_not_found")
        status, _, body = raw_post(
            daemon, "/v1/chat/completions", chat_body(), {"Content-Type": "text/plain"}
        )
        assert status == 415
        assert_openai_error(body, "unsupported_media_type")
        padding = "x" * 3800
        status, _, _ = raw_post(daemon, "/v1/chat/completions", chat_body(user=padding))
        assert status == 200  # just below the limit
        status, _, body = raw_post(
            daemon, "/v1/chat/completions", chat_body(user=padding + "x" * 400)
        )
        assert status == 413
        assert_openai_error(body, "request_too_large")
        for path in (
            "/sleep",
            "/wake_up",
            "/collective_rpc",
            "/server_info",
            "/v1/../sleep",
            "//sleep",
            "/metrics",
        ):
            status, _, body = raw_post(daemon, path, b"{}")
            assert status == 404, path
            assert_openai_error(body, "not_found")
        status, _, body = raw_post(daemon, "/v1/chat/completions", b"", method="GET")
        assert status == 405
        # Nothing above reached the backend's dev routes.
        names = {e["event"] for e in get_json(daemon.backend_url("a") + "/mock/events")["events"]}
        assert not names & {"sleep", "wake_up", "collective_rpc"}
        assert get_json(daemon.url + "/v1/models")["data"][0]["id"] == "a"


def test_api_keys_are_required_when_configured(tmp_path: Path) -> None:
    env = {"GPUMUX_TEST_KEYS": "k1,k2"}
    with running_daemon(
        tmp_path, {"a": mock_model()}, env=env, api_keys_env="GPUMUX_TEST_KEYS"
    ) as daemon:
        status, headers, body = raw_post(daemon, "/v1/chat/completions", chat_body())
        assert status == 401
        assert headers["www-authenticate"] == "Bearer"
        assert_openai_error(body, "invalid_api_key")
        status, _, _ = raw_post(
            daemon, "/v1/chat/completions", chat_body(), {"Authorization": "Bearer nope"}
        )
        assert status == 401
        status, _, _ = raw_post(
            daemon, "/v1/chat/completions", chat_body(), {"Authorization": "Bearer k2"}
        )
        assert status == 200
        assert "k1" not in daemon.log_text()
        assert "k2" not in daemon.log_text()


def test_full_queue_is_429_with_retry_after(tmp_path: Path) -> None:
    model = mock_model(extra_args=["--mock-startup-secs", "2"], max_queue=1)
    with running_daemon(tmp_path, {"a": model}) as daemon:
        results: list[tuple[int, dict[str, str], Any]] = []

        def send() -> None:
            results.append(raw_post(daemon, "/v1/chat/completions", chat_body()))

        first = threading.Thread(target=send)
        first.start()
        wait_until(
            lambda: metric_value(daemon, "gpumux_queue_depth", model="a") == 1, what="queued"
        )
        status, headers, body = raw_post(daemon, "/v1/chat/completions", chat_body())
        assert status == 429
        assert int(headers["retry-after"]) >= 1
        assert_openai_error(body, "queue_full")
        first.join()
        assert results[0][0] == 200


def test_queue_timeout_is_504(tmp_path: Path) -> None:
    model = mock_model(extra_args=["--mock-startup-secs", "3"])
    with running_daemon(tmp_path, {"a": model}, policy={"request_timeout_secs": 0.5}) as daemon:
        status, _, body = raw_post(daemon, "/v1/chat/completions", chat_body())
        assert status == 504
        assert_openai_error(body, "queue_timeout")


def test_model_that_cannot_start_is_503_model_unavailable(tmp_path: Path) -> None:
    broken = mock_model(env={"MOCK_VLLM_EXIT_AT_START": "1"})
    with running_daemon(
        tmp_path, {"a": broken, "b": mock_model()}, supervision={"max_start_failures": 1}
    ) as daemon:
        status, headers, body = raw_post(daemon, "/v1/chat/completions", chat_body())
        assert status == 503
        assert int(headers["retry-after"]) >= 1
        assert_openai_error(body, "model_unavailable")
        status, _, _ = raw_post(daemon, "/v1/chat/completions", chat_body("b"))
        assert status == 200  # the other model is unaffected


def test_backend_4xx_is_passed_through(tmp_path: Path) -> None:
    with running_daemon(
        tmp_path, {"a": mock_model(env={"MOCK_VLLM_HTTP_ERROR_STATUS": "400"})}
    ) as daemon:
        status, _, body = raw_post(daemon, "/v1/chat/completions", chat_body())
        assert status == 400
        assert "error" in body


def test_client_disconnect_mid_stream_aborts_upstream(tmp_path: Path) -> None:
    """The client leaves mid-stream: the backend sees the abort within a second, the lease ends."""
    slow = ["--mock-tokens-per-sec", "5"]
    with running_daemon(tmp_path, {"a": mock_model(extra_args=slow)}) as daemon:
        sock = socket.create_connection(("127.0.0.1", daemon.config["port"]))
        body = chat_body(stream=True, max_tokens=50)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert b"200" in sock.recv(4096)
        wait_until(
            lambda: metric_value(daemon, "gpumux_inflight_requests", model="a") == 1,
            what="in flight",
        )
        sock.close()
        left = time.monotonic()
        wait_until(
            lambda: any(
                e["event"] == "client_abort"
                for e in get_json(daemon.backend_url("a") + "/mock/events")["events"]
            ),
            timeout=5,
            what="client_abort at the backend",
        )
        assert time.monotonic() - left < 1.5
        wait_until(
            lambda: metric_value(daemon, "gpumux_inflight_requests", model="a") == 0,
            what="lease released",
        )


def test_backend_crash_mid_stream_ends_with_error_event_then_restarts(tmp_path: Path) -> None:
    with running_daemon(tmp_path, {"a": mock_model()}) as daemon:
        assert raw_post(daemon, "/v1/chat/completions", chat_body())[0] == 200
        post_json(daemon.backend_url("a") + "/mock/faults", {"crash_after_chunks": 2})
        status, _, raw = raw_post(
            daemon, "/v1/chat/completions", chat_body(stream=True, max_tokens=10)
        )
        assert status == 200
        assert b'"code": "backend_crashed"' in raw
        assert raw.endswith(b"data: [DONE]\n\n")
        with openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0) as sdk:
            reply = sdk.chat.completions.create(
                model="a", messages=[{"role": "user", "content": "again"}]
            )
        assert reply.choices[0].message.content  # restarted after the crash
        assert metric_value(daemon, "gpumux_backend_restarts_total", model="a", reason="crash") == 1


def test_sdk_raises_on_a_failed_stream(tmp_path: Path) -> None:
    with (
        running_daemon(
            tmp_path, {"a": mock_model(env={"MOCK_VLLM_CRASH_AFTER_CHUNKS": "2"})}
        ) as daemon,
        openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0) as sdk,
    ):
        stream = sdk.chat.completions.create(
            model="a", messages=[{"role": "user", "content": "x"}], max_tokens=10, stream=True
        )
        with pytest.raises(openai.APIError):
            for _ in stream:
                pass


def test_hung_backend_is_killed_by_health_checks_and_restarted(tmp_path: Path) -> None:
    """SIGSTOP a backend: failed health probes kill its tree; the next request cold-starts it."""
    import os
    import signal as sig

    supervision = {"health_interval_secs": 0.2, "health_timeout_secs": 0.3}
    with running_daemon(tmp_path, {"a": mock_model()}, supervision=supervision) as daemon:
        assert raw_post(daemon, "/v1/chat/completions", chat_body())[0] == 200
        root = get_json(daemon.backend_url("a") + "/mock/state")["pid"]
        os.kill(root, sig.SIGSTOP)
        wait_until(
            lambda: metric_value(
                daemon, "gpumux_backend_restarts_total", model="a", reason="unhealthy"
            ),
            timeout=10,
            what="unhealthy restart",
        )
        assert raw_post(daemon, "/v1/chat/completions", chat_body())[0] == 200
        assert get_json(daemon.backend_url("a") + "/mock/state")["pid"] != root
