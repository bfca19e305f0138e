"""Overload on Anthropic's routes through the real daemon: a full queue is `529
overloaded_error` (what the `anthropic` SDK retries, honouring `Retry-After`, before it
raises `OverloadedError`); loading feedback's SSE comments are skipped by the SDK; a
streamed request that heard feedback and then timed out in the queue ends with
Anthropic's `event: error`, never a clean end or OpenAI's `[DONE]`."""

from __future__ import annotations

import threading
from pathlib import Path

import anthropic
import pytest

from tests.support.anthropic_api import (
    MESSAGES,
    assert_anthropic_error,
    assert_failed_anthropic_stream,
    messages_body,
    sdk,
)
from tests.support.client import Reply, post
from tests.support.daemon import mock_model, running_daemon
from tests.support.metrics import metric_value
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_full_queue_is_overloaded_and_a_fed_back_stream_ends_with_an_error_event(
    tmp_path: Path,
) -> None:
    # The model never becomes ready while the test runs: one waiter fills its queue.
    slow = mock_model(extra_args=["--mock-startup-secs", "120"], max_queue=1)
    # Starts in 3 s at least: far past the feedback threshold, so its stream begins with
    # comments before the first event, whatever the machine's load.
    fed = mock_model(extra_args=["--mock-startup-secs", "3"])
    with running_daemon(
        tmp_path,
        {"slow": slow, "fed": fed},
        loading_feedback="comments",
        loading_feedback_after_secs=0.2,
        policy={"request_timeout_secs": 15},
    ) as daemon:
        with (
            sdk(daemon.url) as client,
            client.messages.stream(
                model="fed", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
            ) as stream,
        ):
            assert "".join(stream.text_stream)  # the SDK skipped the comments
            assert stream.get_final_message().usage.output_tokens == 4

        streamed: list[Reply] = []

        def wait_in_queue() -> None:
            body = messages_body("slow", stream=True)
            streamed.append(post(daemon, MESSAGES, body, timeout=60))

        waiter = threading.Thread(target=wait_in_queue)
        waiter.start()
        wait_until(
            lambda: metric_value(daemon, "gpumux_queue_depth", model="slow") == 1, what="queued"
        )
        full = post(daemon, MESSAGES, messages_body("slow"))
        assert_anthropic_error(full, 529, "overloaded_error")
        assert int(full.headers["retry-after"]) >= 1
        assert full.headers["x-should-retry"] == "true"
        with (
            sdk(daemon.url, max_retries=1) as client,
            pytest.raises(anthropic.OverloadedError) as raised,
        ):
            client.messages.create(
                model="slow", max_tokens=3, messages=[{"role": "user", "content": "hi"}]
            )
        assert raised.value.type == "overloaded_error"
        # The raw request, then the SDK's try and its one retry: each a 529 on the metrics.
        code = {"model": "slow", "endpoint": MESSAGES, "code": "529"}
        assert metric_value(daemon, "gpumux_requests_total", **code) == 3

        waiter.join(timeout=60)
        (reply,) = streamed
        assert b": gpumux: waiting for slow" in reply.body  # feedback began the stream
        error = assert_failed_anthropic_stream(reply, "overloaded_error")
        assert error["message"]
