"""The id a proxied request is logged, echoed and forwarded under.

Owns: `client_request_id` (the client's `X-Request-Id` when it is a safe token, else a
fresh random one) and the pool of random bytes fresh ids are cut from.
Does not: set headers or bind log context (the proxy does).
"""

from __future__ import annotations

import os
import re

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def client_request_id(given: str | None) -> str:
    """The client's `X-Request-Id` when it is a safe token (≤ 128 of `[A-Za-z0-9._-]`), else
    a fresh one: the id is logged, echoed and forwarded to vLLM, so it is never free text."""
    if given and _REQUEST_ID_RE.fullmatch(given):
        return given
    return _FRESH_IDS.take()


class _FreshIds:
    """Request ids of 16 bytes from the OS's random source, as random as uuid4().hex, read
    256 at a time: os.urandom is a getrandom() syscall, once per request otherwise."""

    __slots__ = ("_at", "_pool")
    POOL_BYTES = 16 * 256

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def take(self) -> str:
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(self.POOL_BYTES), 0
        self._at = at + 16
        return self._pool[at : at + 16].hex()


_FRESH_IDS = _FreshIds()
