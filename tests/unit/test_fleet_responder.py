"""The agent responder over a real loopback socket: answers, and never breaks on bad peers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import MappingProxyType

import pytest

from gpumux.admin.node import ModelStatus, NodeStatus
from gpumux.core.states import DaemonState, ModelState
from gpumux.fleet.agent import MAX_REQUEST_BYTES
from gpumux.fleet.responder import AgentResponder

pytestmark = pytest.mark.unit


def status() -> NodeStatus:
    ready = ModelStatus("m", ModelState.READY, 0, 0, 8, 0.0, "", "")
    return NodeStatus(
        "n1", DaemonState.SERVING, "auto", None, MappingProxyType({"m": ready}), (), None, None
    )


class Source:
    """Node status on demand; `broken` makes reading it raise."""

    def __init__(self) -> None:
        self.broken = False
        self.reads = 0

    def __call__(self) -> NodeStatus:
        self.reads += 1
        if self.broken:
            raise RuntimeError("status exploded")
        return status()


@pytest.fixture
async def agent() -> AsyncIterator[tuple[AgentResponder, Source]]:
    source = Source()
    responder = AgentResponder(source, "127.0.0.1", 0, read_timeout_secs=0.3)
    await responder.start()
    yield responder, source
    await responder.close()


async def ask(port: int, data: bytes, *, close_write: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    if close_write:
        writer.write_eof()
    await writer.drain()
    try:
        async with asyncio.timeout(5):
            return await reader.read()  # until the agent closes
    finally:
        writer.close()


async def test_answers_one_line_and_closes(agent: tuple[AgentResponder, Source]) -> None:
    responder, _ = agent
    assert await ask(responder.port, b"m awake\n") == b"up ready 100%\n"
    assert await ask(responder.port, b"unknown\n") == b"maint\n"


async def test_bad_peers_get_maint_and_the_agent_keeps_answering(
    agent: tuple[AgentResponder, Source],
) -> None:
    responder, source = agent
    assert await ask(responder.port, b"") == b"maint\n"  # silent: times out
    assert await ask(responder.port, b"m awake", close_write=True) == b"up ready 100%\n"
    assert await ask(responder.port, b"x" * (4 * MAX_REQUEST_BYTES) + b"\n") == b"maint\n"
    assert await ask(responder.port, b"\xff\xfe garbage\n") == b"maint\n"
    source.broken = True
    assert await ask(responder.port, b"m\n") == b"maint\n"
    source.broken = False
    # A peer that connects and vanishes without a word.
    _, writer = await asyncio.open_connection("127.0.0.1", responder.port)
    writer.close()
    replies = await asyncio.gather(*(ask(responder.port, b"m cold\n") for _ in range(50)))
    assert set(replies) == {b"up ready 100%\n"}


async def test_close_stops_listening() -> None:
    responder = AgentResponder(Source(), "127.0.0.1", 0)
    await responder.start()
    port = responder.port
    await responder.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
