"""One HTTP connection pool per backend, so one backend's connections can be dropped alone.

Owns: a lazily created `aiohttp.ClientSession` (own `TCPConnector`) per model, used by
the proxy for forwarded requests and by `Backends` for control calls, and `drop(model)`,
which closes every pooled connection to that model's backend.
Does not: pick timeouts per request (callers pass them) or know about CRIU.

Why per model: `criu dump` fails on an established TCP connection into the tree (design
§6), and a keep-alive pool keeps one open for `keepalive_secs` after every request. A
single shared pool could only be closed as a whole, cutting every other model's streams.
After `drop`, the next `session(model)` opens a fresh pool; a caller still holding the
old session gets "Session is closed", which only happens to a request racing a dump of a
drained model.
"""

from __future__ import annotations

import asyncio

import aiohttp
import structlog

log = structlog.get_logger(__name__)

#: Below vLLM's 5 s idle close, so a pooled connection is never closed under a request.
DEFAULT_KEEPALIVE_SECS = 4.0


class UpstreamPools:
    def __init__(self, keepalive_secs: float = DEFAULT_KEEPALIVE_SECS) -> None:
        self._keepalive_secs = keepalive_secs
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._closed = False

    def session(self, model: str) -> aiohttp.ClientSession:
        """The pool for `model`'s backend (created on first use, and again after a drop)."""
        if self._closed:
            raise RuntimeError("upstream pools are closed")
        session = self._sessions.get(model)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=self._keepalive_secs)
            # auto_decompress off: the proxy forwards bodies byte for byte.
            session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
            self._sessions[model] = session
        return session

    async def drop(self, model: str) -> None:
        """Close every connection to `model`'s backend (idempotent)."""
        session = self._sessions.pop(model, None)
        if session is not None and not session.closed:
            await session.close()
            log.debug("upstream_pool_dropped", model=model)

    async def close(self) -> None:
        self._closed = True
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
