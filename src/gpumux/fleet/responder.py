"""The HAProxy agent-check responder: a TCP listener on `agent_host:agent_port`.

Owns: the socket — accept, read one request line (bounded in size and time), answer
with `agent.reply_for` on a fresh node status, close — and a cap on connections served
at once. Anything unexpected (a slow, silent, oversized or garbled peer, or an error
reading node status) is answered `maint` or dropped and logged; it never reaches the
daemon's task group.
Does not: decide the answer (`agent`) or read the scheduler (`NodeStatus` comes from the
callable it is given, which never wakes a model, resets a TTL or takes a lease).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from gpumux.admin.node import NodeStatus
from gpumux.fleet.agent import MAINT, MAX_REQUEST_BYTES, parse_request, reply_for

log = structlog.get_logger(__name__)

#: HAProxy sends `agent-send` as soon as it connects; a peer silent this long gets `maint`.
READ_TIMEOUT_SECS = 2.0
WRITE_TIMEOUT_SECS = 2.0
#: Connections answered at once; more are closed unanswered (HAProxy keeps the last state).
MAX_CONNECTIONS = 256


class AgentResponder:
    def __init__(
        self,
        status: Callable[[], NodeStatus],
        host: str,
        port: int,
        *,
        read_timeout_secs: float = READ_TIMEOUT_SECS,
    ) -> None:
        self._status = status
        self._host = host
        self._port = port
        self._read_timeout = read_timeout_secs
        self._server: asyncio.Server | None = None
        self._open = 0

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the kernel's pick for port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, limit=MAX_REQUEST_BYTES + 1
        )
        log.info("agent_listening", host=self._host, port=self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            writer.close()
            return
        self._open += 1
        try:
            reply = await self._answer(reader)
            writer.write(reply.encode())
            async with asyncio.timeout(WRITE_TIMEOUT_SECS):
                await writer.drain()
        except (OSError, TimeoutError) as exc:
            log.debug("agent_reply_failed", error=repr(exc))
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(WRITE_TIMEOUT_SECS):
                    await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> str:
        try:
            async with asyncio.timeout(self._read_timeout):
                line = await reader.readline()
        except (TimeoutError, ValueError, OSError):
            # Silent (no agent-send configured), or a line over the limit.
            return MAINT + "\n"
        query = parse_request(line)
        if query is None:
            log.debug("agent_request_malformed", request=line[:80].decode("utf-8", "replace"))
        try:
            return reply_for(self._status(), query)
        except Exception:  # a bug in status reading must not take the daemon down
            log.exception("agent_status_failed")
            return MAINT + "\n"
