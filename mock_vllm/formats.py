"""Response bodies and SSE frames for chat, completions and responses, as vLLM writes them.

Owns: the JSON shapes (ids, ``object`` names, ``choices``, ``usage``) and how a stream
opens, carries one token, and closes (final chunk, optional usage chunk, ``[DONE]``).
Does not: pace tokens or apply faults (``generate`` does).
"""

from __future__ import annotations

import json
import time
from typing import Protocol

DONE = b"data: [DONE]\n\n"


def sse(obj: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, object]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


class Format(Protocol):
    def full(self, text: str, finish: str, prompt_tokens: int, n_out: int) -> dict[str, object]:
        """The non-streaming body."""

    def open_frames(self) -> list[bytes]:
        """Frames before the first token."""

    def token_frame(self, piece: str) -> bytes: ...

    def close_frames(
        self, finish: str, prompt_tokens: int, n_out: int, include_usage: bool
    ) -> list[bytes]:
        """Frames after the last token, ``[DONE]`` included where the API has one."""


class _Base:
    object_name = ""

    def __init__(self, id_prefix: str, request_id: str, model: str) -> None:
        self.id = f"{id_prefix}-{request_id}"
        self.model = model
        self.created = int(time.time())

    def _envelope(self, choices: list[dict[str, object]], obj: str) -> dict[str, object]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def _usage_chunk(self, prompt_tokens: int, n_out: int, obj: str) -> bytes:
        return sse({**self._envelope([], obj), "usage": usage(prompt_tokens, n_out)})


class ChatFormat(_Base):
    def __init__(self, request_id: str, model: str) -> None:
        super().__init__("chatcmpl", request_id, model)

    def full(self, text: str, finish: str, prompt_tokens: int, n_out: int) -> dict[str, object]:
        message: dict[str, object] = {
            "role": "assistant",
            "content": text,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "tool_calls": [],
            "reasoning_content": None,
        }
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
        }
        return {
            **self._envelope([choice], "chat.completion"),
            "service_tier": None,
            "system_fingerprint": None,
            "usage": usage(prompt_tokens, n_out),
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }

    def _chunk(self, delta: dict[str, object], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse(self._envelope([choice], "chat.completion.chunk"))

    def open_frames(self) -> list[bytes]:
        return [self._chunk({"role": "assistant", "content": ""}, None)]

    def token_frame(self, piece: str) -> bytes:
        return self._chunk({"content": piece}, None)

    def close_frames(
        self, finish: str, prompt_tokens: int, n_out: int, include_usage: bool
    ) -> list[bytes]:
        frames = [self._chunk({}, finish)]
        if include_usage:
            frames.append(self._usage_chunk(prompt_tokens, n_out, "chat.completion.chunk"))
        return [*frames, DONE]


class CompletionFormat(_Base):
    def __init__(self, request_id: str, model: str) -> None:
        super().__init__("cmpl", request_id, model)

    def _choice(self, text: str, finish: str | None) -> dict[str, object]:
        return {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": finish,
            "stop_reason": None,
            "prompt_logprobs": None,
        }

    def full(self, text: str, finish: str, prompt_tokens: int, n_out: int) -> dict[str, object]:
        return {
            **self._envelope([self._choice(text, finish)], "text_completion"),
            "service_tier": None,
            "system_fingerprint": None,
            "usage": usage(prompt_tokens, n_out),
            "kv_transfer_params": None,
        }

    def open_frames(self) -> list[bytes]:
        return []

    def token_frame(self, piece: str) -> bytes:
        return sse(self._envelope([self._choice(piece, None)], "text_completion"))

    def close_frames(
        self, finish: str, prompt_tokens: int, n_out: int, include_usage: bool
    ) -> list[bytes]:
        frames = [sse(self._envelope([self._choice("", finish)], "text_completion"))]
        if include_usage:
            frames.append(self._usage_chunk(prompt_tokens, n_out, "text_completion"))
        return [*frames, DONE]


class ResponsesFormat:
    """The Responses API: typed events, no ``[DONE]``."""

    def __init__(self, request_id: str, model: str) -> None:
        self.id = f"resp_{request_id}"
        self.msg_id = f"msg_{request_id}"
        self.model = model
        self.created = int(time.time())
        self.seq = 0
        self.text = ""  # streamed so far, for the closing response.completed event

    def full(self, text: str, finish: str, prompt_tokens: int, n_out: int) -> dict[str, object]:
        done = finish != "abort"
        content: list[dict[str, object]] = [
            {"type": "output_text", "text": text, "annotations": [], "logprobs": None}
        ]
        item = {
            "type": "message",
            "id": self.msg_id,
            "role": "assistant",
            "content": content,
            "status": "completed" if done else "incomplete",
        }
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "model": self.model,
            "status": "completed" if done else "incomplete",
            "incomplete_details": None if done else {"reason": finish},
            "output": [item],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": prompt_tokens,
                "output_tokens": n_out,
                "total_tokens": prompt_tokens + n_out,
            },
        }

    def _event(self, event: str, **fields: object) -> bytes:
        self.seq += 1
        return sse({"type": event, "sequence_number": self.seq - 1, **fields}, event)

    def open_frames(self) -> list[bytes]:
        response = {**self.full("", "stop", 0, 0), "status": "in_progress", "output": []}
        return [self._event("response.created", response=response)]

    def token_frame(self, piece: str) -> bytes:
        self.text += piece
        return self._event(
            "response.output_text.delta",
            item_id=self.msg_id,
            output_index=0,
            content_index=0,
            delta=piece,
        )

    def close_frames(
        self, finish: str, prompt_tokens: int, n_out: int, include_usage: bool
    ) -> list[bytes]:
        response = self.full(self.text, finish, prompt_tokens, n_out)
        kind = "response.completed" if finish != "abort" else "response.incomplete"
        return [self._event(kind, response=response)]
