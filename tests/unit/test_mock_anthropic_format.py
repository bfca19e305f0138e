"""mock_vllm's Messages shapes, as vLLM 0.32 writes them (the real tier compares the two)."""

from __future__ import annotations

from mock_vllm.anthropic import MessagesFormat, error_frames, messages_prompt
from mock_vllm.errors import ApiError
from tests.support.anthropic_api import events


def test_a_stream_opens_the_text_block_at_its_first_token_and_closes_it() -> None:
    fmt = MessagesFormat("r1", "m", 4)
    frames = [*fmt.open_frames(), fmt.token_frame("a"), fmt.token_frame(" b")]
    frames += fmt.close_frames("stop", 4, 2, True)
    got = events(b"".join(frames))
    assert [name for name, _ in got] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in got)
    start = got[0][1]["message"]
    assert start["id"] == "chatcmpl-r1"
    assert start["content"] == []
    assert start["usage"] == {"input_tokens": 4, "output_tokens": 0}
    assert got[3][1]["delta"] == {"type": "text_delta", "text": " b"}
    assert got[5][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 4, "output_tokens": 2},
    }


def test_an_empty_stream_has_no_content_block_and_a_full_message_has_one() -> None:
    fmt = MessagesFormat("r", "m", 1)
    names = [
        n
        for n, _ in events(b"".join([*fmt.open_frames(), *fmt.close_frames("length", 1, 0, True)]))
    ]
    assert names == ["message_start", "message_delta", "message_stop"]
    full = MessagesFormat("r", "m", 3).full("", "length", 3, 0)
    assert full["content"] == [{"type": "text", "text": ""}]
    assert full["stop_reason"] == "max_tokens"
    assert "stop_sequence" not in full  # null fields left out, as vLLM does


def test_a_failure_after_the_headers_is_an_error_event() -> None:
    (frame,) = error_frames(ApiError(500, "EngineCore encountered an issue."))
    assert events(frame) == [
        (
            "error",
            {
                "type": "error",
                "error": {
                    "type": "InternalServerError",
                    "message": "EngineCore encountered an issue.",
                },
            },
        )
    ]


def test_the_prompt_reads_the_system_text_and_the_conversation() -> None:
    body = {
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    assert messages_prompt(body) == "system: be brief\nuser: hi"
