"""Loading feedback: a streaming request that waits for its model hears how the wait goes.

Owns: waiting for a lease while, past `loading_feedback_after_secs`, sending 200 with SSE
headers and one progress line a second — an SSE comment (`: gpumux: waiting for large
(waking, 2 queued, about 4 s)`, which SDKs skip and which keeps intermediaries from
timing out) or, for chat completions in `reasoning` mode, an OpenAI-shaped chunk with
`delta.reasoning_content` (which chat UIs show) — and ending the stream with an error
event in the route's API shape (OpenAI's `data:` and `[DONE]`, Anthropic's `event: error`)
when the wait fails after 200 was sent. A wait shorter than the
threshold sends nothing: the request behaves exactly as without feedback.
Does not: forward anything (the proxy relays the backend's stream into the response this
returns) or read the scheduler's state itself (the proxy passes a `describe` callable).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from gpumux.core.errors import GpumuxError
from gpumux.http.errors import OPENAI, ErrorShape
from gpumux.scheduler.runner import Lease, Scheduler

FeedbackMode = Literal["off", "comments", "reasoning"]
#: Seconds between progress lines once feedback has started.
INTERVAL_SECS = 1.0
CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Waited:
    """How a wait ended: a lease, and the response already started for it (or None when
    the wait was short); `error` when it failed after the response started."""

    lease: Lease | None
    response: web.StreamResponse | None
    error: GpumuxError | None = None


class LoadingFeedback:
    def __init__(self, mode: FeedbackMode, after_secs: float) -> None:
        self.mode = mode
        self.after_secs = after_secs

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    async def wait(
        self,
        request: web.BaseRequest,
        acquire: Coroutine[Any, Any, Lease],
        release: Callable[[Lease], None],
        headers: Callable[[], dict[str, str]],
        describe: Callable[[float], str],
        *,
        model: str,
        shape: ErrorShape = OPENAI,
    ) -> Waited:
        """Await `acquire`; past the threshold, stream progress while it runs.

        A lease granted while the client is leaving is released here (`release`): every
        lease either reaches the caller or goes back. A failure after 200 ends the stream
        as `shape` says (the route's API).
        """
        started = time.monotonic()
        task = asyncio.ensure_future(acquire)
        handed = False
        try:
            await asyncio.wait({task}, timeout=self.after_secs)
            if task.done():
                handed = True
                return Waited(task.result(), None)  # a GpumuxError propagates as before
            response = web.StreamResponse(status=200, headers=headers())
            response.content_type = "text/event-stream"
            await response.prepare(request)
            reasoning = self.mode == "reasoning" and request.path == CHAT_PATH
            while not task.done():
                text = describe(time.monotonic() - started)
                line = _reasoning_chunk(model, text) if reasoning else _comment(text)
                await response.write(line)
                await asyncio.wait({task}, timeout=INTERVAL_SECS)
            handed = True
            try:
                return Waited(task.result(), response)
            except GpumuxError as exc:
                await response.write(shape.stream_error(exc))
                return Waited(None, response, exc)
        finally:
            if not task.done():
                task.cancel()  # the client left while queued: the scheduler hears Cancel
            elif not handed and not task.cancelled() and task.exception() is None:
                release(task.result())


def describe_wait(scheduler: Scheduler, model: str, waited_secs: float) -> str:
    """One progress line from the scheduler's frozen view (never the core)."""
    view = scheduler.view
    status = view.models.get(model)
    if status is None:
        return f"waiting for {model} ({waited_secs:.0f} s so far)"
    parts = [status.state.value, f"{status.queue_depth} queued"]
    op = "cold_start" if status.state.value in ("stopped", "starting") else "wake"
    ops = view.costs.get("ops", {})
    learned = [secs for key, secs in ops.items() if key.startswith(f"{model}|{op}|")]
    if learned:
        parts.append(f"about {max(0.0, max(learned) - waited_secs):.0f} s")
    return f"waiting for {model} ({', '.join(parts)}; {waited_secs:.0f} s so far)"


def backend_error_event(status: int, payload: bytes, shape: ErrorShape = OPENAI) -> bytes:
    """The backend refused after gpumux had sent 200: its message as an SSE error event
    (OpenAI's and Anthropic's error bodies both keep it in `error.message`)."""
    message = f"The backend answered {status}."
    try:
        document = json.loads(payload)
        found = document.get("error", document) if isinstance(document, dict) else None
        if isinstance(found, dict) and isinstance(found.get("message"), str):
            message = found["message"]
    except (ValueError, UnicodeDecodeError):
        pass
    return shape.stream_refusal(status, message[:500])


def _comment(text: str) -> bytes:
    return f": gpumux: {text}\n\n".encode()


def _reasoning_chunk(model: str, text: str) -> bytes:
    chunk = {
        "id": "gpumux-loading",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "delta": {"reasoning_content": text + "\n"}, "finish_reason": None}
        ],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"
