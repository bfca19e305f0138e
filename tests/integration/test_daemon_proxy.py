"""The proxy contract through the real daemon: streaming, errors, disconnects, crashes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import openai
import pytest

from tests.support.backend import backend_events, backend_state, set_faults
from tests.support.client import (
    CHAT,
    Reply,
    assert_failed_stream,
    assert_openai_error,
    chat_body,
    get_json,
    open_stream,
    post,
)
from tests.support.daemon import mock_model, running_daemon
from tests.support.metrics import metric_value
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration


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
        reply = post(daemon, CHAT, chat_body(stream=True))
        assert reply.status == 200
        assert reply.body.endswith(b"data: [DONE]\n\n")


def test_non_streaming_body_is_passed_through_and_request_id_echoed(tmp_path: Path) -> None:
    with running_daemon(tmp_path, {"a": mock_model()}) as daemon:
        reply = post(
            daemon,
            "/v1/completions",
            json.dumps({"model": "a", "prompt": "x", "max_tokens": 2}).encode(),
            headers={"X-Request-Id": "req-123"},
        )
        assert reply.status == 200
        assert reply.headers["x-request-id"] == "req-123"
        assert reply.json()["object"] == "text_completion"
        seen = [e for e in backend_events(daemon, "a") if e["event"] == "request"]
        assert seen[-1]["request_id"] == "req-123"  # forwarded to the backend
        reply = post(daemon, "/v1/completions", b'{"model": "a", "prompt": "x"}')
        assert reply.headers.get("x-request-id")  # generated when absent


def test_each_client_error_status(tmp_path: Path) -> None:
    models = {"a": mock_model()}
    with running_daemon(tmp_path, models, max_request_body_bytes=4096) as daemon:
        assert_openai_error(post(daemon, CHAT, b"{not json"), 400, "invalid_json")
        error = assert_openai_error(post(daemon, CHAT, b'{"messages": []}'), 400)
        assert error["param"] == "model"
        error = assert_openai_error(post(daemon, CHAT, b'{"model": 7}'), 400)
        assert error["param"] == "model"
        assert_openai_error(post(daemon, CHAT, chat_body("nope")), 404, "model_not_found")
        plain = post(daemon, CHAT, chat_body(), headers={"Content-Type": "text/plain"})
        assert_openai_error(plain, 415, "unsupported_media_type")
        padding = "x" * 3800
        assert post(daemon, CHAT, chat_body(user=padding)).status == 200  # just below the limit
        too_large = post(daemon, CHAT, chat_body(user=padding + "x" * 400))
        assert_openai_error(too_large, 413, "request_too_large")
        for path in (
            "/sleep",
            "/wake_up",
            "/collective_rpc",
            "/server_info",
            "/v1/../sleep",
            "//sleep",
            "/metrics",
        ):
            assert_openai_error(post(daemon, path, b"{}"), 404, "not_found")
        assert post(daemon, CHAT, b"", method="GET").status == 405
        # Nothing above reached the backend's dev routes.
        names = {e["event"] for e in backend_events(daemon, "a")}
        assert not names & {"sleep", "wake_up", "collective_rpc"}
        assert get_json(daemon.url + "/v1/models")["data"][0]["id"] == "a"


def test_api_keys_are_required_when_configured(tmp_path: Path) -> None:
    env = {"GPUMUX_TEST_KEYS": "k1,k2"}
    with running_daemon(
        tmp_path, {"a": mock_model()}, env=env, api_keys_env="GPUMUX_TEST_KEYS"
    ) as daemon:
        reply = post(daemon, CHAT, chat_body())
        assert_openai_error(reply, 401, "invalid_api_key")
        assert reply.headers["www-authenticate"] == "Bearer"
        wrong = post(daemon, CHAT, chat_body(), headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        right = post(daemon, CHAT, chat_body(), headers={"Authorization": "Bearer k2"})
        assert right.status == 200
        assert "k1" not in daemon.log_text()
        assert "k2" not in daemon.log_text()


def test_full_queue_is_429_with_retry_after(tmp_path: Path) -> None:
    model = mock_model(extra_args=["--mock-startup-secs", "2"], max_queue=1)
    with running_daemon(tmp_path, {"a": model}) as daemon:
        results: list[Reply] = []

        def send() -> None:
            results.append(post(daemon, CHAT, chat_body()))

        first = threading.Thread(target=send)
        first.start()
        wait_until(
            lambda: metric_value(daemon, "gpumux_queue_depth", model="a") == 1, what="queued"
        )
        reply = post(daemon, CHAT, chat_body())
        assert_openai_error(reply, 429, "queue_full")
        assert int(reply.headers["retry-after"]) >= 1
        first.join()
        assert results[0].status == 200


def test_queue_timeout_is_504(tmp_path: Path) -> None:
    model = mock_model(extra_args=["--mock-startup-secs", "3"])
    with running_daemon(tmp_path, {"a": model}, policy={"request_timeout_secs": 0.5}) as daemon:
        assert_openai_error(post(daemon, CHAT, chat_body()), 504, "queue_timeout")


def test_model_that_cannot_start_is_503_model_unavailable(tmp_path: Path) -> None:
    broken = mock_model(env={"MOCK_VLLM_EXIT_AT_START": "1"})
    with running_daemon(
        tmp_path, {"a": broken, "b": mock_model()}, supervision={"max_start_failures": 1}
    ) as daemon:
        reply = post(daemon, CHAT, chat_body())
        assert_openai_error(reply, 503, "model_unavailable")
        assert int(reply.headers["retry-after"]) >= 1
        assert post(daemon, CHAT, chat_body("b")).status == 200  # the other model is unaffected


def test_backend_4xx_is_passed_through(tmp_path: Path) -> None:
    with running_daemon(
        tmp_path, {"a": mock_model(env={"MOCK_VLLM_HTTP_ERROR_STATUS": "400"})}
    ) as daemon:
        reply = post(daemon, CHAT, chat_body())
        assert reply.status == 400
        assert "error" in reply.json()


def test_client_disconnect_mid_stream_aborts_upstream(tmp_path: Path) -> None:
    """The client leaves mid-stream: the backend sees the abort within a second, the lease ends."""
    slow = ["--mock-tokens-per-sec", "5"]
    with running_daemon(tmp_path, {"a": mock_model(extra_args=slow)}) as daemon:
        sock = open_stream(daemon, chat_body(stream=True, max_tokens=50))
        assert b"200" in sock.recv(4096)
        wait_until(
            lambda: metric_value(daemon, "gpumux_inflight_requests", model="a") == 1,
            what="in flight",
        )
        sock.close()
        left = time.monotonic()
        wait_until(
            lambda: any(e["event"] == "client_abort" for e in backend_events(daemon, "a")),
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
        assert post(daemon, CHAT, chat_body()).status == 200
        set_faults(daemon, "a", crash_after_chunks=2)
        crashed = post(daemon, CHAT, chat_body(stream=True, max_tokens=10))
        assert_failed_stream(crashed, "backend_crashed")
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
        assert post(daemon, CHAT, chat_body()).status == 200
        root = backend_state(daemon, "a")["pid"]
        os.kill(root, sig.SIGSTOP)
        wait_until(
            lambda: metric_value(
                daemon, "gpumux_backend_restarts_total", model="a", reason="unhealthy"
            ),
            timeout=10,
            what="unhealthy restart",
        )
        assert post(daemon, CHAT, chat_body()).status == 200
        assert backend_state(daemon, "a")["pid"] != root
