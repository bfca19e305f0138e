"""Backend faults (ecosystem §4 cases 11–19) through the real daemon and real signals.

Each test starts `gpumux serve` as a subprocess with `mock_vllm` backends, breaks a
backend the way production breaks it (SIGKILL, SIGSTOP, a refused start, a port that
someone else holds, a fault knob), and checks what the client sees and what gpumux
does about it. Cases already covered in tests/integration are listed in
docs/reliability.md instead of being repeated here.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.support.admin import Admin
from tests.support.backend import (
    backend_events,
    backend_state,
    event_names,
    set_faults,
    spawn_count,
)
from tests.support.client import (
    CHAT,
    Reply,
    assert_failed_stream,
    assert_openai_error,
    chat_body,
    post,
    post_json,
    request,
)
from tests.support.daemon import RunningDaemon, mock_model, running_daemon
from tests.support.metrics import metric_value
from tests.support.ports import free_port
from tests.support.procs import alive, stopped, tree_pids
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration


def in_thread(target: object) -> tuple[threading.Thread, list[Reply]]:
    """Run `target()` (which returns a Reply) in a thread; its reply lands in the list."""
    results: list[Reply] = []

    def run() -> None:
        results.append(target())  # type: ignore[operator]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, results


def live_descendants(daemon: RunningDaemon) -> list[int]:
    return [p.pid for p in daemon.descendants() if alive(p.pid)]


def test_backend_sigkilled_mid_stream_ends_with_error_event_and_restarts(tmp_path: Path) -> None:
    """Case 11 with a real SIGKILL of the API server alone (as the OOM killer would pick it).

    The stream ends with a `backend_crashed` error event and `[DONE]` (never a clean EOF),
    the crash is counted, nothing of the old tree survives, and the next request is served
    by a fresh backend.
    """
    slow = ["--mock-tokens-per-sec", "10"]
    with running_daemon(tmp_path, {"a": mock_model(extra_args=slow)}) as daemon:
        assert post(daemon, CHAT, chat_body()).status == 200
        root = backend_state(daemon, "a")["pid"]
        old_tree = tree_pids(root)
        thread, replies = in_thread(
            lambda: post(daemon, CHAT, chat_body(stream=True, max_tokens=40))
        )
        wait_until(lambda: backend_state(daemon, "a")["running"] == 1, what="stream running")
        time.sleep(0.3)  # a few chunks are out
        os.kill(root, signal.SIGKILL)
        thread.join(timeout=20)
        assert replies, "the client never got an answer"
        reply = replies[0]
        assert_failed_stream(reply, "backend_crashed")
        assert b'"delta"' in reply.body  # the crash really was mid-stream
        wait_until(
            lambda: (
                metric_value(daemon, "gpumux_backend_restarts_total", model="a", reason="crash")
                == 1
            ),
            what="the crash counted",
        )
        assert post(daemon, CHAT, chat_body()).status == 200
        assert backend_state(daemon, "a")["pid"] != root
        wait_until(lambda: not [p for p in old_tree if alive(p)], what="the old tree gone")


def test_backend_killed_before_response_headers_is_502_with_retry_hints(tmp_path: Path) -> None:
    """Case 12: the tree dies while a non-streaming request waits for its first byte.

    The client gets one OpenAI-shaped 502 (no hang, no connection reset) carrying
    `Retry-After` and a deliberate `x-should-retry`; the backend saw the request once.
    """
    with running_daemon(tmp_path, {"a": mock_model()}) as daemon:
        assert post(daemon, CHAT, chat_body()).status == 200
        set_faults(daemon, "a", slow_first_byte_secs=10)
        root = backend_state(daemon, "a")["pid"]
        thread, replies = in_thread(lambda: post(daemon, CHAT, chat_body()))
        wait_until(
            lambda: event_names(daemon, "a").count("request") == 2, what="request at the backend"
        )
        os.killpg(root, signal.SIGKILL)
        thread.join(timeout=20)
        assert replies, "the client never got an answer"
        reply = replies[0]
        error = assert_openai_error(reply, 502)
        assert error["code"] in ("backend_crashed", "backend_unreachable")
        assert error["type"] == "server_error"
        assert int(reply.headers["retry-after"]) >= 1
        expected = "false" if error["code"] == "backend_crashed" else "true"
        assert reply.headers.get("x-should-retry") == expected, reply.headers
        assert reply.elapsed < 10


def test_backend_sigstopped_mid_request_gives_504_and_an_error_event(tmp_path: Path) -> None:
    """Case 13: a frozen backend (SIGSTOP) trips the upstream idle timeout.

    A stream already flowing ends with an `upstream_timeout` error event and `[DONE]`; a
    non-streaming request sent to the frozen backend gets 504 `upstream_timeout`. Both
    within a few idle periods, not after the client's own timeout. (The health-check
    kill and restart that follow are covered by
    tests/integration/test_daemon_proxy.py::test_hung_backend_is_killed_by_health_checks_and_restarted.)
    """
    slow = ["--mock-tokens-per-sec", "10"]
    supervision = {"upstream_idle_timeout_secs": 1.0, "health_interval_secs": 30}
    with running_daemon(
        tmp_path, {"a": mock_model(extra_args=slow)}, supervision=supervision
    ) as daemon:
        assert post(daemon, CHAT, chat_body(max_tokens=2)).status == 200
        root = backend_state(daemon, "a")["pid"]
        stream_thread, streams = in_thread(
            lambda: post(daemon, CHAT, chat_body(stream=True, max_tokens=60))
        )
        wait_until(lambda: backend_state(daemon, "a")["running"] == 1, what="stream running")
        time.sleep(0.3)
        with stopped(root):
            plain = post(daemon, CHAT, chat_body(max_tokens=2), timeout=20)
            stream_thread.join(timeout=20)
        assert_openai_error(plain, 504, "upstream_timeout")
        assert plain.elapsed < 8
        assert streams, "the stream never ended"
        assert_failed_stream(streams[0], "upstream_timeout")
        assert streams[0].elapsed < 10


def test_backend_5xx_json_is_passed_through_byte_for_byte(tmp_path: Path) -> None:
    """Case 14 (pass-through half): a backend's 500 reaches the client unchanged."""
    model = mock_model(env={"MOCK_VLLM_HTTP_ERROR_STATUS": "500"})
    with running_daemon(tmp_path, {"a": model}) as daemon:
        proxied = post(daemon, CHAT, chat_body())
        direct = request(daemon.config["models"]["a"]["port"], CHAT, chat_body())
        assert proxied.status == direct.status == 500
        assert proxied.body == direct.body
        assert proxied.headers["content-type"] == direct.headers["content-type"]
        assert "error" in proxied.json()


STREAK = 3  # passive_5xx_threshold in the tests below
POISON = "POISON-PILL"


def streak_checks(daemon: RunningDaemon, verdict: str) -> float:
    return metric_value(
        daemon, "gpumux_backend_5xx_streak_checks_total", model="a", verdict=verdict
    )


def unhealthy_restarts(daemon: RunningDaemon) -> float:
    return metric_value(daemon, "gpumux_backend_restarts_total", model="a", reason="unhealthy")


def streak_log_events(daemon: RunningDaemon) -> list[str]:
    return [
        str(e["event"])
        for e in daemon.log_events()
        if str(e.get("event", "")).startswith("backend_5xx_streak")
    ]


def test_backend_5xx_streak_confirmed_by_the_canary_restarts_the_backend(tmp_path: Path) -> None:
    """Case 14 (breaker): a backend that answers 500 to everything. Each of the `STREAK`
    500s (a stream's status line among them) reaches the client unchanged; then gpumux's
    own canary fails too, the backend is restarted once (`reason="unhealthy"`), and the
    fresh process serves. The fault is set at runtime, so the new process starts clean."""
    supervision = {"passive_5xx_threshold": STREAK}
    with running_daemon(tmp_path, {"a": mock_model()}, supervision=supervision) as daemon:
        assert post(daemon, CHAT, chat_body()).status == 200
        root = backend_state(daemon, "a")["pid"]
        set_faults(daemon, "a", http_error_status=500)
        direct = request(daemon.config["models"]["a"]["port"], CHAT, chat_body())
        assert direct.status == 500
        for i in range(STREAK):
            reply = post(daemon, CHAT, chat_body(stream=i == 0))
            assert reply.status == 500
            assert reply.body == direct.body
        wait_until(lambda: unhealthy_restarts(daemon) == 1, timeout=20, what="unhealthy restart")
        assert streak_checks(daemon, "unhealthy") == 1
        assert streak_checks(daemon, "healthy") == 0
        assert post(daemon, CHAT, chat_body()).status == 200
        assert backend_state(daemon, "a")["pid"] != root
        assert unhealthy_restarts(daemon) == 1
        assert streak_log_events(daemon) == ["backend_5xx_streak_confirmed"]


def test_poisoned_request_streak_passes_the_canary_and_restarts_nothing(tmp_path: Path) -> None:
    """Case 14 (a client's own 5xx): only requests carrying a marker make the backend
    answer 500. A streak of them gets its 500s, but the canary (which no client shaped)
    passes: the same process keeps serving, the verdict is "healthy", and a flood of
    poisoned requests costs one probe per `health_interval_secs`."""
    poisoned = mock_model(
        env={"MOCK_VLLM_HTTP_ERROR_STATUS": "500", "MOCK_VLLM_HTTP_ERROR_MARKER": POISON}
    )
    # A long interval: any second confirmation would wait past the end of the test.
    supervision = {"passive_5xx_threshold": STREAK, "health_interval_secs": 30}
    with running_daemon(tmp_path, {"a": poisoned}, supervision=supervision) as daemon:
        assert post(daemon, CHAT, chat_body()).status == 200
        root = backend_state(daemon, "a")["pid"]
        for _ in range(STREAK * 4):
            reply = post(daemon, CHAT, chat_body(messages=[{"role": "user", "content": POISON}]))
            assert_openai_error(reply, 500)
        wait_until(lambda: streak_checks(daemon, "healthy") >= 1, timeout=20, what="a verdict")
        assert post(daemon, CHAT, chat_body()).status == 200
        assert backend_state(daemon, "a")["pid"] == root
        assert streak_checks(daemon, "healthy") == 1
        assert streak_checks(daemon, "unhealthy") == 0
        assert unhealthy_restarts(daemon) == 0
        assert spawn_count(daemon, "a") == 1
        assert streak_log_events(daemon) == ["backend_5xx_streak_client_specific"]
        canaries = [
            e
            for e in backend_events(daemon, "a")
            if e["event"] == "request" and e.get("path") == "/v1/completions"
        ]
        assert len(canaries) == 1  # the client only ever sent chat completions


def test_passive_5xx_threshold_zero_disables_the_breaker(tmp_path: Path) -> None:
    """Case 14 (off switch): with `passive_5xx_threshold: 0` a backend answering 500 to
    everything is neither probed nor restarted by the passive breaker."""
    broken = mock_model(env={"MOCK_VLLM_HTTP_ERROR_STATUS": "500"})
    supervision = {"passive_5xx_threshold": 0}
    with running_daemon(tmp_path, {"a": broken}, supervision=supervision) as daemon:
        for _ in range(STREAK * 3):
            assert post(daemon, CHAT, chat_body()).status == 500
        root = backend_state(daemon, "a")["pid"]
        time.sleep(1.0)  # a confirmation, had one been started, runs at once
        assert streak_checks(daemon, "healthy") == streak_checks(daemon, "unhealthy") == 0
        assert unhealthy_restarts(daemon) == 0
        assert backend_state(daemon, "a")["pid"] == root
        assert streak_log_events(daemon) == []


def test_interleaved_5xx_never_trip_the_breaker(tmp_path: Path) -> None:
    """Case 14 (consecutive only): 5xx interleaved with successes never reach the
    threshold; `STREAK` in a row afterwards do (the control that the breaker is live)."""
    poisoned = mock_model(
        env={"MOCK_VLLM_HTTP_ERROR_STATUS": "500", "MOCK_VLLM_HTTP_ERROR_MARKER": POISON}
    )
    bad = chat_body(messages=[{"role": "user", "content": POISON}])
    supervision = {"passive_5xx_threshold": STREAK}
    with running_daemon(tmp_path, {"a": poisoned}, supervision=supervision) as daemon:
        root = None
        for _ in range(4):
            for _ in range(STREAK - 1):
                assert post(daemon, CHAT, bad).status == 500
            assert post(daemon, CHAT, chat_body(stream=True)).status == 200
            root = root or backend_state(daemon, "a")["pid"]
        time.sleep(1.0)  # a confirmation, had one been started, runs at once
        assert streak_checks(daemon, "healthy") == streak_checks(daemon, "unhealthy") == 0
        assert streak_log_events(daemon) == []
        for _ in range(STREAK):
            assert post(daemon, CHAT, bad).status == 500
        wait_until(lambda: streak_checks(daemon, "healthy") == 1, timeout=20, what="a verdict")
        assert backend_state(daemon, "a")["pid"] == root
        assert unhealthy_restarts(daemon) == 0


def test_start_failures_open_the_breaker_until_half_open_probe_or_admin_reset(
    tmp_path: Path,
) -> None:
    """Case 15: a backend that exits at start is tried `max_start_failures` times, then FAILED.

    While FAILED, requests get 503 `model_unavailable` + Retry-After at once and nothing
    is spawned; after `failed_retry_secs` one half-open attempt is made; an admin reset
    allows another attempt at once.
    """
    broken = mock_model(env={"MOCK_VLLM_EXIT_AT_START": "1"})
    supervision = {"max_start_failures": 2, "restart_backoff_secs": 0.1, "failed_retry_secs": 2}
    token = "fault-suite-admin-token"
    with running_daemon(
        tmp_path,
        {"a": broken, "b": mock_model()},
        env={"GPUMUX_FAULTS_ADMIN": token},
        supervision=supervision,
        admin_port=free_port(),
        admin_token_env="GPUMUX_FAULTS_ADMIN",
    ) as daemon:
        first = post(daemon, CHAT, chat_body())
        assert_openai_error(first, 503, "model_unavailable")
        assert int(first.headers["retry-after"]) >= 1
        assert spawn_count(daemon, "a") == 2
        assert metric_value(daemon, "gpumux_model_state", model="a", state="failed") == 1
        for _ in range(3):
            fast = post(daemon, CHAT, chat_body())
            assert_openai_error(fast, 503, "model_unavailable")
            assert fast.elapsed < 1.0
        assert spawn_count(daemon, "a") == 2  # the breaker is open: no spawn
        assert post(daemon, CHAT, chat_body("b")).status == 200  # the other model is unaffected
        time.sleep(2.2)
        assert_openai_error(post(daemon, CHAT, chat_body()), 503, "model_unavailable")
        assert spawn_count(daemon, "a") == 3  # exactly one half-open attempt
        assert_openai_error(post(daemon, CHAT, chat_body()), 503, "model_unavailable")
        assert spawn_count(daemon, "a") == 3
        admin = Admin(daemon, token)
        assert admin.post("/api/models/a/reset")[0] == 200
        assert_openai_error(post(daemon, CHAT, chat_body()), 503, "model_unavailable")
        assert spawn_count(daemon, "a") >= 4  # a reset allows new attempts


def test_backend_never_healthy_is_killed_at_startup_timeout_leaving_no_process(
    tmp_path: Path,
) -> None:
    """Case 16: a backend that listens but never answers /health 200 is killed at its
    `startup_timeout_secs`, counted as a failed start, and leaves no process behind."""
    hopeless = mock_model(env={"MOCK_VLLM_NEVER_HEALTHY": "1"}, startup_timeout_secs=1.5)
    with running_daemon(tmp_path, {"a": hopeless}, supervision={"max_start_failures": 1}) as daemon:
        seen: set[int] = set()
        thread, replies = in_thread(lambda: post(daemon, CHAT, chat_body()))
        while thread.is_alive():
            seen.update(p.pid for p in daemon.descendants())
            time.sleep(0.05)
        assert replies
        assert_openai_error(replies[0], 503, "model_unavailable")
        assert replies[0].elapsed < 10
        assert len(seen) >= 2  # the API server and its engine core were both seen
        wait_until(lambda: not [p for p in seen if alive(p)], timeout=5, what="tree gone")
        assert not live_descendants(daemon)
        assert (
            metric_value(daemon, "gpumux_backend_restarts_total", model="a", reason="start_failed")
            == 1
        )


def test_stale_keepalive_connections_never_surface_as_client_errors(tmp_path: Path) -> None:
    """Case 17: the backend closes idle connections after 1 s; requests 1.1 s apart all pass."""
    short = ["--mock-keepalive-timeout-secs", "1"]
    with running_daemon(tmp_path, {"a": mock_model(extra_args=short)}) as daemon:
        assert post(daemon, CHAT, chat_body()).status == 200
        for i in range(4):
            time.sleep(1.1)
            reply = post(daemon, CHAT, chat_body(stream=i % 2 == 1))
            assert reply.status == 200, reply.body
            if i % 2 == 1:
                assert reply.body.endswith(b"data: [DONE]\n\n")
                assert b'"error"' not in reply.body


def test_backend_found_asleep_is_woken_before_routing(tmp_path: Path) -> None:
    """Case 18 (asleep): someone calls the backend's /sleep directly; the health monitor
    notices, the model is marked asleep and woken, and gpumux still serves."""
    supervision = {"health_interval_secs": 0.2, "health_timeout_secs": 0.5}
    with running_daemon(tmp_path, {"a": mock_model()}, supervision=supervision) as daemon:
        assert post(daemon, CHAT, chat_body()).status == 200
        post_json(daemon.backend_url("a") + "/sleep?level=1&mode=wait", {})
        assert backend_state(daemon, "a")["asleep"]
        time.sleep(0.5)
        reply = post(daemon, CHAT, chat_body(), timeout=5)
        assert reply.status == 200


def test_backend_health_503_without_cause_is_restarted_before_routing(tmp_path: Path) -> None:
    """Case 18 (/health 503): a live backend whose /health turns 503 is restarted."""
    supervision = {"health_interval_secs": 0.2, "health_timeout_secs": 0.5}
    with running_daemon(tmp_path, {"a": mock_model()}, supervision=supervision) as daemon:
        assert post(daemon, CHAT, chat_body()).status == 200
        root = backend_state(daemon, "a")["pid"]
        set_faults(daemon, "a", never_healthy=True)
        wait_until(
            lambda: (
                metric_value(daemon, "gpumux_backend_restarts_total", model="a", reason="unhealthy")
                == 1
            ),
            timeout=10,
            what="unhealthy restart",
        )
        assert post(daemon, CHAT, chat_body()).status == 200
        assert backend_state(daemon, "a")["pid"] != root


def test_backend_port_taken_by_a_foreign_process_fails_fast_and_others_serve(
    tmp_path: Path,
) -> None:
    """Case 19: another process holds model a's port. a fails fast with a clear log line;
    b keeps working."""
    models = {"a": mock_model(), "b": mock_model()}
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", models["a"]["port"]))
    squatter.listen(1)
    try:
        with running_daemon(tmp_path, models, supervision={"max_start_failures": 1}) as daemon:
            reply = post(daemon, CHAT, chat_body())
            assert_openai_error(reply, 503, "model_unavailable")
            assert reply.elapsed < 10
            lines = [
                e
                for e in daemon.log_events()
                if e.get("model") == "a" and "Address already in use" in str(e)
            ]
            assert lines, "no log line names the port conflict"
            assert post(daemon, CHAT, chat_body("b")).status == 200
    finally:
        squatter.close()
