"""Anthropic's Messages API through gpumux against the real CPU vLLM (tiny model, its
chat template): a plain message, a stream read by the official `anthropic` SDK, the raw
event sequence relayed as vLLM wrote it, count_tokens, and vLLM's own refusal passed
through. The shapes are compared with mock_vllm's, so the mock stays close to vLLM.

One daemon serves the whole module (a cold start costs ~20-30 s on a busy 2-core box);
the fixture's first request pays for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import pytest

from mock_vllm.anthropic import MessagesFormat
from tests.support.anthropic_api import MESSAGES, events, messages_body, sdk
from tests.support.client import post
from tests.support.cpu_vllm import STARTUP_TIMEOUT_SECS, RealVllm, vllm_daemon, vllm_model
from tests.support.daemon import RunningDaemon

pytestmark = [pytest.mark.real_vllm, pytest.mark.timeout(STARTUP_TIMEOUT_SECS + 60)]

MODEL = "tiny"
QUESTION = [{"role": "user", "content": "Name a colour."}]
#: Greedy sampling, so a plain and a streamed answer are the same text (the SDK has no
#: `temperature` argument; vLLM reads it from the body).
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def served(
    real_vllm: RealVllm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningDaemon, anthropic.types.Message]]:
    """A daemon with one real model, cold-started by a first plain message."""
    tmp = tmp_path_factory.mktemp("anthropic")
    with vllm_daemon(tmp, real_vllm, {MODEL: vllm_model(real_vllm, tmp / "vllm-tmp")}) as daemon:
        with sdk(daemon.url, timeout=STARTUP_TIMEOUT_SECS) as client:
            first = client.messages.create(
                model=MODEL, max_tokens=6, messages=QUESTION, extra_body=GREEDY
            )
        yield daemon, first


def _mock_message() -> dict[str, object]:
    return MessagesFormat("r", MODEL, 1).full("text", "length", 1, 1)


def test_a_plain_message_has_the_mocks_shape(
    served: tuple[RunningDaemon, anthropic.types.Message],
) -> None:
    daemon, first = served
    assert first.type == "message"
    assert first.role == "assistant"
    assert first.model == MODEL
    assert first.content[0].type == "text"
    assert first.usage.input_tokens > 0
    assert first.usage.output_tokens == 6  # dummy weights never end early
    assert first.stop_reason == "max_tokens"
    reply = post(daemon, MESSAGES, messages_body(MODEL, max_tokens=4, temperature=0))
    assert reply.status == 200, reply.body
    body = reply.json()
    mock = _mock_message()
    assert set(body) == set(mock), body  # no `stop_sequence`: null fields are left out
    assert set(body["usage"]) == {"input_tokens", "output_tokens"}, body
    assert reply.headers["request-id"] == reply.headers["x-request-id"]


def test_a_stream_is_relayed_as_vllm_wrote_it_and_read_by_the_sdk(
    served: tuple[RunningDaemon, anthropic.types.Message],
) -> None:
    daemon, first = served
    with (
        sdk(daemon.url) as client,
        client.messages.stream(
            model=MODEL, max_tokens=6, messages=QUESTION, extra_body=GREEDY
        ) as s,
    ):
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == first.content[0].text  # greedy: the same text as the plain message
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 6

    reply = post(daemon, MESSAGES, messages_body(MODEL, max_tokens=3, temperature=0, stream=True))
    assert reply.status == 200, reply.body
    got = events(reply.body)
    names = [name for name, _ in got]
    assert names[0] == "message_start"
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[1:-3]) == {"content_block_start", "content_block_delta"}, names
    # Each event's fields as the mock writes them.
    fmt = MessagesFormat("r", MODEL, 1)
    mock = dict(
        events(
            b"".join(
                [*fmt.open_frames(), fmt.token_frame("x"), *fmt.close_frames("length", 1, 1, True)]
            )
        )
    )
    for name, data in got:
        assert name is not None
        assert data["type"] == name
        assert set(data) == set(mock[name]), (name, data, mock[name])
    start = dict(got)["message_start"]["message"]
    assert set(start) == set(mock["message_start"]["message"]), start


def test_count_tokens_matches_the_messages_input(
    served: tuple[RunningDaemon, anthropic.types.Message],
) -> None:
    daemon, first = served
    with sdk(daemon.url) as client:
        counted = client.messages.count_tokens(model=MODEL, messages=QUESTION)
    assert counted.input_tokens == first.usage.input_tokens


def test_vllms_own_refusal_passes_through_in_its_anthropic_shape(
    served: tuple[RunningDaemon, anthropic.types.Message],
) -> None:
    daemon, _ = served
    too_long = post(daemon, MESSAGES, messages_body(MODEL, max_tokens=100_000))
    assert too_long.status == 400, too_long.body
    body = json.loads(too_long.body)
    assert body["type"] == "error"
    assert body["error"]["message"]
    with sdk(daemon.url) as client, pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=MODEL, max_tokens=100_000, messages=QUESTION)
