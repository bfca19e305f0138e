"""Loading feedback through the real daemon and the real openai SDK: a streaming request
that waits for a slow start hears progress (comments or reasoning chunks) and the SDK
parses the stream cleanly; a short wait sends nothing extra; a failed wait after 200 ends
with an error event the SDK raises."""

from __future__ import annotations

import http.client
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.client import chat_body
from tests.support.daemon import RunningDaemon, mock_model, running_daemon

pytestmark = pytest.mark.integration

SLOW_START = ["--mock-startup-secs", "3"]


def raw_stream(daemon: RunningDaemon, model: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.config["port"], timeout=60)
    body = chat_body(model, stream=True)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    headers = {k.lower(): v for k, v in response.getheaders()}
    conn.close()
    return response.status, headers, data


def sdk_stream(daemon: RunningDaemon, model: str) -> tuple[str, str]:
    """(content, reasoning) of one streamed chat through the SDK."""
    with openai.OpenAI(base_url=daemon.url + "/v1", api_key="x", max_retries=0) as sdk:
        stream = sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
        content, reasoning = "", ""
        for chunk in stream:
            if not chunk.choices:
                continue
            delta: Any = chunk.choices[0].delta
            content += delta.content or ""
            reasoning += getattr(delta, "reasoning_content", None) or ""
    return content, reasoning


@pytest.mark.timeout(120)
def test_comments_while_waiting_and_nothing_for_a_short_wait(tmp_path: Path) -> None:
    models = {"large": mock_model(extra_args=SLOW_START, aliases=["big"])}
    with running_daemon(
        tmp_path, models, loading_feedback="comments", loading_feedback_after_secs=1
    ) as daemon:
        status, headers, data = raw_stream(daemon, "large")
        assert status == 200
        assert data.startswith(b": gpumux: waiting for large (")
        assert data.count(b": gpumux: waiting") >= 1
        assert data.rstrip().endswith(b"data: [DONE]")
        assert float(headers["x-gpumux-queue-seconds"]) >= 1
        # Ready now: a short wait, so the bytes are exactly the backend's.
        status, _, data = raw_stream(daemon, "large")
        assert b": gpumux" not in data
        content, reasoning = sdk_stream(daemon, "big")
        assert content
        assert reasoning == ""


@pytest.mark.timeout(120)
def test_reasoning_chunks_parse_in_the_sdk(tmp_path: Path) -> None:
    models = {"large": mock_model(extra_args=SLOW_START)}
    with running_daemon(
        tmp_path, models, loading_feedback="reasoning", loading_feedback_after_secs=0.5
    ) as daemon:
        content, reasoning = sdk_stream(daemon, "large")
        assert content
        assert "waiting for large" in reasoning


@pytest.mark.timeout(120)
def test_a_wait_that_fails_after_200_ends_with_an_error_the_sdk_raises(tmp_path: Path) -> None:
    models = {"large": mock_model(extra_args=["--mock-startup-secs", "30"])}
    with running_daemon(
        tmp_path,
        models,
        loading_feedback="comments",
        loading_feedback_after_secs=0.5,
        policy={"request_timeout_secs": 2},
    ) as daemon:
        with pytest.raises(openai.APIError, match="Timed out"):
            sdk_stream(daemon, "large")
        status, _, data = raw_stream(daemon, "large")
        assert status == 200
        assert b'"code": "queue_timeout"' in data
        assert data.endswith(b"data: [DONE]\n\n")
