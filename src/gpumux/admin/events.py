"""Server-sent events for the admin API: a bounded history replay, then live events.

Owns: `EventHub` — numbers every observer event, keeps the last `HISTORY` of them, fans
them out to subscribers through bounded queues, and serves `GET /api/events` as an SSE
stream (`id:` = sequence number, so `Last-Event-ID` resumes without duplicates; a
keep-alive comment every `HEARTBEAT_SECS`).
Does not: produce events (the observer does) or authenticate (the admin middleware does).

A subscriber that falls `QUEUE_LIMIT` events behind is disconnected rather than
buffered without bound; its client reconnects with `Last-Event-ID` and replays.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque

from aiohttp import web

HISTORY = 200
QUEUE_LIMIT = 512
HEARTBEAT_SECS = 15.0
#: Tells a stream to end (shutdown, or the subscriber fell too far behind).
_END = None


class EventHub:
    def __init__(self, *, history: int = HISTORY, queue_limit: int = QUEUE_LIMIT) -> None:
        self._seq = itertools.count(1)
        self._history: deque[tuple[int, dict[str, object]]] = deque(maxlen=history)
        self._queues: set[asyncio.Queue[tuple[int, dict[str, object]] | None]] = set()
        self._queue_limit = queue_limit
        self._closed = False

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def publish(self, event: dict[str, object]) -> None:
        item = (next(self._seq), event)
        self._history.append(item)
        for queue in list(self._queues):
            if queue.qsize() >= self._queue_limit:
                self._queues.discard(queue)
                queue.put_nowait(_END)  # one slot over the limit is reserved for this
            else:
                queue.put_nowait(item)

    def recent(self, after: int = 0, limit: int = HISTORY) -> list[tuple[int, dict[str, object]]]:
        return [item for item in self._history if item[0] > after][-limit:]

    def close(self) -> None:
        """End every stream (shutdown); later subscribers get the replay and end at once."""
        self._closed = True
        for queue in self._queues:
            queue.put_nowait(_END)
        self._queues.clear()

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """`GET /api/events[?replay=N]`: replay up to N past events, then follow live ones."""
        try:
            after = int(request.headers.get("Last-Event-ID", "0"))
            replay = min(int(request.query.get("replay", str(HISTORY))), HISTORY)
        except ValueError:
            after, replay = 0, HISTORY
        queue: asyncio.Queue[tuple[int, dict[str, object]] | None] = asyncio.Queue()
        if not self._closed:
            self._queues.add(queue)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # a reverse proxy must not batch the stream
            }
        )
        try:
            await response.prepare(request)
            await response.write(b"retry: 3000\n\n")
            for seq, event in self.recent(after, replay) if replay > 0 else []:
                await response.write(_frame(seq, event))
            while not self._closed or not queue.empty():
                try:
                    async with asyncio.timeout(HEARTBEAT_SECS):
                        live = await queue.get()
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if live is _END:
                    break
                await response.write(_frame(*live))
        except (ConnectionResetError, ConnectionError):
            pass  # the client left
        finally:
            self._queues.discard(queue)
        return response


def _frame(seq: int, event: dict[str, object]) -> bytes:
    data = json.dumps(event, default=str, separators=(",", ":"))
    return f"id: {seq}\nevent: {event.get('event', 'message')}\ndata: {data}\n\n".encode()
