"""Per-backend connection pools: dropping one model's closes only that model's connections."""

from __future__ import annotations

import pytest

from gpumux.backends.http1_reply import UpstreamClosed
from gpumux.backends.upstream import UpstreamPools

pytestmark = pytest.mark.unit


async def test_drop_closes_one_pool_and_the_next_use_opens_a_new_one() -> None:
    pools = UpstreamPools(keepalive_secs=1.0)
    a, b = pools.session("a"), pools.session("b")
    assert pools.session("a") is a
    assert a is not b
    await pools.drop("a")
    assert a.closed
    assert not b.closed
    fresh = pools.session("a")
    assert fresh is not a
    assert not fresh.closed
    await pools.drop("nobody")  # idempotent, unknown models too
    await pools.close()
    assert fresh.closed
    assert b.closed
    with pytest.raises(RuntimeError):
        pools.session("a")


async def test_drop_closes_the_forwarding_pool_too() -> None:
    pools = UpstreamPools(keepalive_secs=1.0)
    a, b = pools.forwarding("a"), pools.forwarding("b")
    assert pools.forwarding("a") is a
    await pools.drop("a")
    with pytest.raises(UpstreamClosed):  # a request racing the drop is refused
        await a.send(1, b"", connect_timeout=1.0, idle_timeout=1.0)
    fresh = pools.forwarding("a")
    assert fresh is not a
    assert pools.forwarding("b") is b
    await pools.close()
    with pytest.raises(RuntimeError):
        pools.forwarding("a")
