"""One HTTP connection pool per backend, so one backend's connections can be dropped alone.

Owns: per model, a lazily created `aiohttp.ClientSession` (own `TCPConnector`) used by
`Backends` for control calls, and a `ForwardPool` (`backends.http1`) the proxy forwards
requests through; and `drop(model)`, which closes every pooled connection of both kinds
to that model's backend.
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

from gpumux.backends.http1 import ForwardPool

log = structlog.get_logger(__name__)

#: Below vLLM's 5 s idle close, so a pooled connection is never closed under a request.
DEFAULT_KEEPALIVE_SECS = 4.0


class UpstreamPools:
    def __init__(self, keepalive_secs: float = DEFAULT_KEEPALIVE_SECS) -> None:
        self._keepalive_secs = keepalive_secs
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._forwarding: dict[str, ForwardPool] = {}
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

    def forwarding(self, model: str) -> ForwardPool:
        """The proxy's pool for `model`'s backend (created on first use, and again after a drop)."""
        if self._closed:
            raise RuntimeError("upstream pools are closed")
        pool = self._forwarding.get(model)
        if pool is None:
            pool = self._forwarding[model] = ForwardPool(keepalive_secs=self._keepalive_secs)
        return pool

    async def drop(self, model: str) -> None:
        """Close every connection to `model`'s backend (idempotent)."""
        forwarding = self._forwarding.pop(model, None)
        if forwarding is not None:
            forwarding.close()  # idle ones now; one still forwarding when it is done
        session = self._sessions.pop(model, None)
        if session is not None and not session.closed:
            await session.close()
            log.debug("upstream_pool_dropped", model=model)

    async def close(self) -> None:
        self._closed = True
        for forwarding in self._forwarding.values():
            forwarding.close()
        self._forwarding = {}
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
