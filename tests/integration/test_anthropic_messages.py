"""Anthropic's Messages API through the real daemon with the official `anthropic` SDK:
messages plain and streamed, count_tokens, aliases, keys in `x-api-key`, every error in
Anthropic's shape, and a stream cut by a crashed backend that ends with `event: error`.
One daemon serves the whole module (each test leaves the model serving)."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest

from tests.support.admin import Admin
from tests.support.anthropic_api import (
    COUNT_TOKENS,
    MESSAGES,
    assert_anthropic_error,
    assert_failed_anthropic_stream,
    events,
    messages_body,
    sdk,
)
from tests.support.backend import set_faults
from tests.support.client import CHAT, assert_openai_error, chat_body, post
from tests.support.daemon import RunningDaemon, mock_model, running_daemon
from tests.support.metrics import metric_value
from tests.support.ports import free_port
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

KEY = "sk-anthropic-test-key"
TOKEN = "admin-token"
AUTH = {"x-api-key": KEY}
RESTARTS = "gpumux_backend_restarts_total"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    env = {"ANTHROPIC_TEST_KEYS": KEY, "ANTHROPIC_TEST_TOKEN": TOKEN}
    with running_daemon(
        tmp_path_factory.mktemp("anthropic"),
        {"a": mock_model(aliases=["claude-sonnet-4-5"])},
        env=env,
        api_keys_env="ANTHROPIC_TEST_KEYS",
        admin_port=free_port(),
        admin_token_env="ANTHROPIC_TEST_TOKEN",
        max_request_body_bytes=4096,
    ) as running:
        yield running


def test_messages_plain_streamed_and_counted_through_an_alias(daemon: RunningDaemon) -> None:
    question = [{"role": "user", "content": "what runs on few cards"}]
    with sdk(daemon.url, KEY) as client:
        plain = client.messages.with_raw_response.create(
            model="claude-sonnet-4-5", max_tokens=6, system="be brief", messages=question
        )
        message = plain.parse()
        with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=6, system="be brief", messages=question
        ) as stream:
            streamed_text = "".join(stream.text_stream)
            final = stream.get_final_message()
        counted = client.messages.count_tokens(
            model="claude-sonnet-4-5", system="be brief", messages=question
        )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text
    assert message.stop_reason == "max_tokens"  # the mock always fills max_tokens
    assert message.usage.output_tokens == 6
    assert message.usage.input_tokens > 0
    assert plain.headers["request-id"] == plain.headers["x-request-id"]
    # The mock is deterministic: the stream carries the same text, relayed as sent.
    assert streamed_text == message.content[0].text
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 6
    assert counted.input_tokens == message.usage.input_tokens
    ok = {"model": "a", "code": "200"}
    assert metric_value(daemon, "gpumux_requests_total", endpoint=MESSAGES, **ok) >= 2
    assert metric_value(daemon, "gpumux_requests_total", endpoint=COUNT_TOKENS, **ok) >= 1
    code, body = Admin(daemon, TOKEN).get("/api/requests?model=a")
    assert code == 200, body
    logged = [r for r in body["requests"] if r["endpoint"] == MESSAGES]
    assert logged
    assert all(r["alias"] == "claude-sonnet-4-5" for r in logged)
    # Usage from Anthropic's `input_tokens`/`output_tokens`, streamed or not.
    assert {r["completion_tokens"] for r in logged} == {6}


def test_a_raw_stream_is_anthropic_events_byte_for_byte(daemon: RunningDaemon) -> None:
    reply = post(daemon, MESSAGES, messages_body(stream=True), headers=AUTH)
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    names = [name for name, _ in events(reply.body)]
    assert names == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert reply.body.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


def test_unknown_model_is_not_found_error_in_the_sdk(daemon: RunningDaemon) -> None:
    with sdk(daemon.url, KEY) as client, pytest.raises(anthropic.NotFoundError) as raised:
        client.messages.create(
            model="nope", max_tokens=3, messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.status_code == 404
    assert raised.value.type == "not_found_error"
    assert raised.value.request_id


def test_client_errors_are_anthropic_shaped(daemon: RunningDaemon) -> None:
    assert_anthropic_error(
        post(daemon, MESSAGES, b"{not json", headers=AUTH), 400, "invalid_request_error"
    )
    missing = post(daemon, MESSAGES, b'{"max_tokens": 3, "messages": []}', headers=AUTH)
    assert_anthropic_error(missing, 400, "invalid_request_error")
    plain = post(daemon, MESSAGES, messages_body(), headers={**AUTH, "Content-Type": "text/plain"})
    assert_anthropic_error(plain, 400, "invalid_request_error")
    too_large = post(daemon, COUNT_TOKENS, messages_body(text="x" * 5000), headers=AUTH)
    assert_anthropic_error(too_large, 413, "request_too_large")
    unknown = post(daemon, COUNT_TOKENS, messages_body("nope"), headers=AUTH)
    assert_anthropic_error(unknown, 404, "not_found_error")
    assert post(daemon, MESSAGES, None, method="GET", headers=AUTH).status == 405
    # OpenAI-shaped routes keep OpenAI's shape (and its 415) on the same daemon.
    openai_plain = post(daemon, CHAT, chat_body(), headers={**AUTH, "Content-Type": "text/plain"})
    assert_openai_error(openai_plain, 401, "invalid_api_key")  # x-api-key is Anthropic's only
    bearer = {"Authorization": f"Bearer {KEY}", "Content-Type": "text/plain"}
    assert_openai_error(post(daemon, CHAT, chat_body(), headers=bearer), 415)


def test_keys_are_accepted_in_x_api_key_or_bearer(daemon: RunningDaemon) -> None:
    reply = post(daemon, MESSAGES, messages_body())
    assert_anthropic_error(reply, 401, "authentication_error")
    wrong = post(daemon, MESSAGES, messages_body(), headers={"x-api-key": "nope"})
    assert_anthropic_error(wrong, 401, "authentication_error")
    with sdk(daemon.url, "nope") as client, pytest.raises(anthropic.AuthenticationError):
        client.messages.count_tokens(model="a", messages=[{"role": "user", "content": "hi"}])
    bearer = post(daemon, MESSAGES, messages_body(), headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status == 200
    assert post(daemon, MESSAGES, messages_body(), headers=AUTH).status == 200
    assert KEY not in daemon.log_text()


def test_a_backend_dying_mid_stream_ends_with_an_error_event(daemon: RunningDaemon) -> None:
    assert post(daemon, MESSAGES, messages_body(), headers=AUTH).status == 200  # awake
    restarts = metric_value(daemon, RESTARTS, model="a", reason="crash")
    set_faults(daemon, "a", crash_after_chunks=3)
    crashed = post(daemon, MESSAGES, messages_body(stream=True, max_tokens=10), headers=AUTH)
    error = assert_failed_anthropic_stream(crashed, "api_error")
    assert "failed mid-request" in error["message"]
    wait_until(
        lambda: metric_value(daemon, RESTARTS, model="a", reason="crash") == restarts + 1,
        what="the crash noticed",
    )
    assert post(daemon, MESSAGES, messages_body(), headers=AUTH).status == 200  # restarted
    set_faults(daemon, "a", crash_after_chunks=3)
    with (
        sdk(daemon.url, KEY) as client,
        pytest.raises(anthropic.APIStatusError) as raised,
        client.messages.stream(
            model="a", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        for _ in stream.text_stream:
            pass
    assert raised.value.type == "api_error"  # raised, never a clean end of the stream
    # Leave the model serving for the next test: the second crash noticed, then a request.
    wait_until(
        lambda: metric_value(daemon, RESTARTS, model="a", reason="crash") == restarts + 2,
        what="the second crash noticed",
    )
    assert post(daemon, MESSAGES, messages_body(), headers=AUTH).status == 200


def test_the_backends_own_error_passes_through_in_anthropic_shape(daemon: RunningDaemon) -> None:
    """mock_vllm's fault knobs apply to its Messages route: a poisoned prompt fails there
    (vLLM's Anthropic shape, its class-like type), others are served."""
    assert post(daemon, MESSAGES, messages_body(), headers=AUTH).status == 200  # awake
    set_faults(daemon, "a", http_error_status=500, http_error_marker="poison")
    try:
        failed = post(daemon, MESSAGES, messages_body(text="poison pill"), headers=AUTH)
        assert failed.status == 500
        assert failed.json()["type"] == "error"
        assert failed.json()["error"]["type"] == "InternalServerError"
        with sdk(daemon.url, KEY) as client, pytest.raises(anthropic.InternalServerError):
            client.messages.create(
                model="a", max_tokens=3, messages=[{"role": "user", "content": "poison"}]
            )
        assert post(daemon, MESSAGES, messages_body(text="fine"), headers=AUTH).status == 200
    finally:
        set_faults(daemon, "a", http_error_status=None, http_error_marker="")
