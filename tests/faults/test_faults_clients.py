"""Overload, timeouts, client behaviour and daemon death (ecosystem §4 cases 32–37).

Clients here are the real `openai` SDK where its retry logic is the point, and raw
sockets where the point is a client that vanishes. The daemon is killed with a real
SIGKILL where its own death is the fault.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import openai
import pytest

from tests.support.backend import backend_events, event_names
from tests.support.client import CHAT, Reply, assert_openai_error, chat_body, open_stream, post
from tests.support.criu import CHECKPOINT, checkpoint_section, require_criu, wait_image
from tests.support.criu import chat as criu_chat
from tests.support.daemon import daemon_config, mock_model, running_daemon, start_daemon, wait_event
from tests.support.metrics import metric_value
from tests.support.procs import alive, tree_pids
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration


def test_sdk_retries_a_full_queue_and_succeeds_once_capacity_returns(tmp_path: Path) -> None:
    """Case 32: 429 `queue_full` carries an integer Retry-After that the SDK honours; its
    retry is served once the queue has room."""
    model = mock_model(extra_args=["--mock-startup-secs", "1.5"], max_queue=1)
    with running_daemon(tmp_path, {"a": model}) as daemon:
        holder: list[Reply] = []
        first = threading.Thread(target=lambda: holder.append(post(daemon, CHAT, chat_body())))
        first.start()
        wait_until(
            lambda: metric_value(daemon, "gpumux_queue_depth", model="a") == 1, what="queued"
        )
        rejected = post(daemon, CHAT, chat_body())
        assert_openai_error(rejected, 429, "queue_full")
        assert rejected.headers["retry-after"].isdigit()
        assert rejected.headers.get("x-should-retry") == "true"
        with openai.OpenAI(
            base_url=daemon.url + "/v1", api_key="x", max_retries=2, timeout=30
        ) as sdk:
            reply = sdk.chat.completions.create(
                model="a", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        assert reply.choices[0].message.content
        first.join(timeout=20)
        assert holder[0].status == 200
        rejections = metric_value(
            daemon, "gpumux_requests_total", model="a", endpoint=CHAT, code="429"
        )
        assert rejections >= 2  # ours, then the SDK's first attempt; its retry succeeded


def test_request_timed_out_in_queue_is_never_dispatched_later(tmp_path: Path) -> None:
    """Case 33: a request that got 504 `queue_timeout` is gone for good; when the model
    comes up later it never reaches the backend."""
    model = mock_model(extra_args=["--mock-startup-secs", "1.5"])
    with running_daemon(tmp_path, {"a": model}, policy={"request_timeout_secs": 0.4}) as daemon:
        reply = post(daemon, CHAT, chat_body())
        assert_openai_error(reply, 504, "queue_timeout")
        wait_until(
            lambda: metric_value(daemon, "gpumux_model_state", model="a", state="ready") == 1,
            what="a ready",
        )
        time.sleep(0.5)
        assert "request" not in event_names(daemon, "a")
        assert metric_value(daemon, "gpumux_queue_depth", model="a") == 0


def test_client_leaving_the_queue_calls_off_the_switch_it_caused(tmp_path: Path) -> None:
    """Case 34: the only request for b leaves while a drains for it; the switch is called
    off, a goes back to serving without ever sleeping, and its stream finishes."""
    slow = ["--mock-tokens-per-sec", "8"]
    models = {"a": mock_model(extra_args=slow), "b": mock_model()}
    with running_daemon(tmp_path, models) as daemon:
        stream: list[Reply] = []
        streaming = threading.Thread(
            target=lambda: stream.append(
                post(daemon, CHAT, chat_body("a", stream=True, max_tokens=24))
            )
        )
        streaming.start()
        wait_until(
            lambda: metric_value(daemon, "gpumux_inflight_requests", model="a") == 1,
            what="a streaming",
        )
        waiting = open_stream(daemon, chat_body("b"))
        wait_until(
            lambda: metric_value(daemon, "gpumux_model_state", model="a", state="draining") == 1,
            what="a draining for b",
        )
        assert metric_value(daemon, "gpumux_queue_depth", model="b") == 1
        waiting.close()
        wait_until(
            lambda: metric_value(daemon, "gpumux_queue_depth", model="b") == 0,
            what="b's queue empty",
        )
        wait_until(
            lambda: metric_value(daemon, "gpumux_model_state", model="a", state="ready") == 1,
            what="a serving again",
        )
        streaming.join(timeout=20)
        assert stream[0].status == 200
        assert stream[0].body.endswith(b"data: [DONE]\n\n")
        assert b'"error"' not in stream[0].body
        assert "sleep" not in event_names(daemon, "a")
        assert metric_value(daemon, "gpumux_model_state", model="b", state="stopped") == 1
        assert metric_value(daemon, "gpumux_switches_total", to="b", outcome="cancelled") == 1
        requests = [e for e in backend_events(daemon, "a") if e["event"] == "request"]
        assert len(requests) == 1


def test_daemon_sigkilled_takes_its_backends_with_it(tmp_path: Path) -> None:
    """Case 37 (parent-death half): SIGKILL gpumux; every backend process dies on its own
    (parent-death signal) within seconds, before any new gpumux runs a sweep."""
    with running_daemon(tmp_path, {"a": mock_model(), "b": mock_model()}) as daemon:
        for model in "ab":
            assert post(daemon, CHAT, chat_body(model)).status == 200
        family = [p.pid for p in daemon.descendants()]
        assert len(family) >= 4  # two API servers and their engine cores
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(timeout=10)
        wait_until(
            lambda: not [p for p in family if alive(p)], timeout=5, what="orphans gone by pdeathsig"
        )


def test_daemon_sigkilled_with_a_criu_restored_tree_leaves_nothing_after_the_next_start(
    tmp_path: Path,
) -> None:
    """Case 37 (CRIU half): a tree restored by CRIU is gpumux's child only by adoption (the
    subreaper); after gpumux is SIGKILLed it dies by its parent-death signal or is swept by
    the next gpumux start, and the model then serves again from a fresh start."""
    require_criu()
    models = {"a": mock_model(eviction=CHECKPOINT), "b": mock_model()}
    config = daemon_config(tmp_path, models, checkpoint=checkpoint_section(tmp_path))
    first = start_daemon(tmp_path / "one", config)
    second = None
    try:
        first.wait_ready()
        criu_chat(first, "a")
        criu_chat(first, "b")  # a is dumped to make room
        wait_image(tmp_path / "images", "a")
        criu_chat(first, "a")  # and restored
        restored = wait_event(first, "criu_restored", model="a")["pid"]
        family = tree_pids(restored)
        assert family, "the restored tree is not alive"
        family += [p.pid for p in first.descendants()]
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
        second = start_daemon(tmp_path / "two", config)
        second.wait_ready()
        wait_until(lambda: not [p for p in family if alive(p)], timeout=10, what="no process left")
        assert post(second, CHAT, chat_body("a")).status == 200
    finally:
        for daemon in (first, second):
            if daemon is not None and daemon.process.poll() is None:
                daemon.stop()
        if second is not None:
            assert not second.survivors()
