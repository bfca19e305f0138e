"""Daemon lifecycle: graceful SIGTERM, and no orphans after SIGKILL once the next start swept."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import pytest

from tests.support.client import Reply, assert_openai_error, chat_body, http_status, post
from tests.support.daemon import daemon_config, mock_model, running_daemon, start_daemon
from tests.support.metrics import metric_value
from tests.support.procs import alive
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration


def test_sigterm_drains_in_flight_refuses_new_and_leaves_no_process(tmp_path: Path) -> None:
    slow = ["--mock-tokens-per-sec", "10"]
    with running_daemon(tmp_path, {"a": mock_model(extra_args=slow), "b": mock_model()}) as daemon:
        assert post(daemon, "/v1/chat/completions", chat_body("b")).status == 200
        results: list[Reply] = []
        streaming = threading.Thread(
            target=lambda: results.append(
                post(daemon, "/v1/chat/completions", chat_body("a", stream=True, max_tokens=15))
            )
        )
        streaming.start()
        wait_until(
            lambda: metric_value(daemon, "gpumux_inflight_requests", model="a") == 1,
            what="the stream in flight",
        )
        daemon.process.send_signal(signal.SIGTERM)
        wait_until(lambda: http_status(daemon.url + "/health") == 503, what="503 while draining")
        refused = post(daemon, "/v1/chat/completions", chat_body("b"))
        assert_openai_error(refused, 503, "shutting_down")
        assert refused.headers["retry-after"]
        streaming.join(timeout=20)
        assert results
        assert results[0].status == 200
        assert results[0].body.endswith(b"data: [DONE]\n\n")  # the in-flight stream finished
        assert daemon.process.wait(timeout=20) == 0
    # running_daemon asserts no descendant survived


def test_sigkill_leaves_nothing_once_the_next_start_has_swept(tmp_path: Path) -> None:
    models = {"a": mock_model(), "b": mock_model()}
    config = daemon_config(tmp_path, models)
    first = start_daemon(tmp_path / "one", config)
    first.wait_ready()
    assert post(first, "/v1/chat/completions", chat_body("a")).status == 200
    orphans = [p.pid for p in first.descendants()]
    assert orphans
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=10)
    # The parent-death signal alone may already have ended them; the sweep covers the rest.
    second = start_daemon(tmp_path / "two", config)
    try:
        second.wait_ready()
        wait_until(
            lambda: not [p for p in orphans if alive(p)],
            what="sweep",
        )
        registry = Path(config["state_dir"]) / "children.json"
        assert not registry.exists() or not json.loads(registry.read_text() or "[]")
        assert post(second, "/v1/chat/completions", chat_body("a")).status == 200
    finally:
        second.stop()
        assert not second.survivors()


def test_invalid_config_exits_2_before_binding(tmp_path: Path) -> None:
    config = daemon_config(tmp_path, {"a": mock_model()}, bogus_key=1)
    daemon = start_daemon(tmp_path, config)
    assert daemon.process.wait(timeout=20) == 2
    assert "bogus_key" in daemon.log_text()
    assert http_status(daemon.url + "/health") is None
