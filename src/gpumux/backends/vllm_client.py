"""The control side of one vLLM backend: health, sleep/wake, RPCs, warm-up.

Owns: `VllmClient`, a thin adapter over one backend's HTTP control surface (the
`VLLM_SERVER_DEV_MODE=1` routes, `/health` and 1-token `/v1/completions` calls),
with vLLM's exact shapes (`/sleep?level=L&mode=M`, repeated `tags` on `/wake_up`,
`{"method": ...}` for `/collective_rpc`), and `BackendControlError`, the one exception
it raises: every non-2xx reply, connection failure and timeout is wrapped at this
boundary. `asyncio.CancelledError` always propagates.

Does not: own the `aiohttp.ClientSession` (the caller creates, pools and closes it,
e.g. closes a backend's pooled connections before a CRIU dump), retry, decide deadlines
(each call takes the caller's named timeout), sequence a wake (the orchestrator does),
forward user traffic (the proxy does) or log.

The caller's session should have no `base_url` and a connector whose
`keepalive_timeout` is below vLLM's `VLLM_HTTP_TIMEOUT_KEEP_ALIVE` (5 s), or a pooled
connection may be closed under a control call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Final

import aiohttp

SLEEP_LEVELS: Final = frozenset({0, 1, 2})
#: vLLM's `mode` for `/sleep`: `abort` (vLLM's default) drops in-flight requests,
#: `wait` drains them first, `keep` keeps them queued for after the wake.
SLEEP_MODES: Final = frozenset({"abort", "wait", "keep"})
WAKE_TAGS: Final = frozenset({"weights", "kv_cache", "scheduling"})

_DETAIL_MAX_CHARS: Final = 200

_Params = Sequence[tuple[str, str]]


class BackendControlError(Exception):
    """A control call to a backend failed: non-2xx reply, bad reply, refused or timed out.

    `status` is the HTTP status, or None when no reply arrived. `detail` is short,
    single-line and holds no secrets (a truncated reply body or the exception kind).
    """

    def __init__(self, operation: str, status: int | None, detail: str) -> None:
        self.operation = operation
        self.status = status
        self.detail = detail
        where = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"backend {operation} failed ({where}): {detail}")


class VllmClient:
    """Control calls against one backend at `base_url` (``http://127.0.0.1:PORT``)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self.base_url = base_url.rstrip("/")

    @classmethod
    def for_port(
        cls, session: aiohttp.ClientSession, port: int, *, host: str = "127.0.0.1"
    ) -> VllmClient:
        return cls(session, f"http://{host}:{port}")

    def __repr__(self) -> str:
        return f"VllmClient({self.base_url!r})"

    async def health(self, timeout: float) -> bool:
        """True iff `GET /health` answers 200 within `timeout`.

        A 503 (engine dead), any other status, a refused connection (vLLM binds before
        it listens) and a timeout all read as False; this never raises except on
        cancellation. It says nothing about sleep: vLLM answers 200 while asleep.
        """
        try:
            async with self._session.get(
                self._url("/health"), timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, OSError):  # OSError covers TimeoutError
            return False

    async def is_sleeping(self, timeout: float) -> bool:
        """`GET /is_sleeping` → `{"is_sleeping": bool}`."""
        body = await self._call("is_sleeping", "GET", "/is_sleeping", timeout=timeout)
        value = body.get("is_sleeping") if isinstance(body, dict) else None
        if not isinstance(value, bool):
            raise BackendControlError("is_sleeping", 200, "reply lacks a boolean is_sleeping")
        return value

    async def sleep(self, level: int, *, mode: str = "wait", timeout: float) -> None:
        """`POST /sleep?level=L&mode=M`: 1 offloads weights to host RAM, 2 discards them.

        The default `wait` lets in-flight requests finish; vLLM's own default aborts them.
        """
        if level not in SLEEP_LEVELS:
            raise ValueError(f"sleep level must be one of {sorted(SLEEP_LEVELS)}, got {level!r}")
        if mode not in SLEEP_MODES:
            raise ValueError(f"sleep mode must be one of {sorted(SLEEP_MODES)}, got {mode!r}")
        params = (("level", str(level)), ("mode", mode))
        await self._call("sleep", "POST", "/sleep", params=params, timeout=timeout)

    async def wake_up(self, tags: Sequence[str] | None, timeout: float) -> None:
        """`POST /wake_up`, with one `tags=` query parameter per tag; None wakes everything.

        After a level-2 sleep the orchestrator wakes `["weights"]`, calls
        `collective_rpc("reload_weights")`, then wakes `["kv_cache"]`.
        """
        params: list[tuple[str, str]] = []
        if tags is not None:
            if isinstance(tags, str) or not tags:
                raise ValueError("tags must be None or a non-empty sequence of tag names")
            unknown = [t for t in tags if t not in WAKE_TAGS]
            if unknown:
                raise ValueError(f"unknown wake tags {unknown}; known: {sorted(WAKE_TAGS)}")
            params = [("tags", t) for t in tags]
        await self._call("wake_up", "POST", "/wake_up", params=params, timeout=timeout)

    async def collective_rpc(self, method: str, timeout: float) -> None:
        """`POST /collective_rpc {"method": method}` on every worker (e.g. `reload_weights`)."""
        if not method:
            raise ValueError("collective_rpc needs a method name")
        await self._call(
            f"collective_rpc:{method}",
            "POST",
            "/collective_rpc",
            json_body={"method": method},
            timeout=timeout,
        )

    async def reset_prefix_cache(self, timeout: float) -> bool:
        """`POST /reset_prefix_cache`; returns vLLM's `success` flag (True if it sent none).

        vLLM answers 200 `{"success": false}` when it could not reset (e.g. requests
        were running); that is reported, not raised.
        """
        body = await self._call(
            "reset_prefix_cache", "POST", "/reset_prefix_cache", timeout=timeout
        )
        if isinstance(body, dict) and isinstance(body.get("success"), bool):
            return bool(body["success"])
        return True

    async def warmup(self, model_alias: str, timeout: float) -> None:
        """One 1-token completion as `model_alias` (the served model name); 200 or raise."""
        await self.completion(model_alias, "hi", max_tokens=1, timeout=timeout, operation="warmup")

    async def completion(
        self,
        model_alias: str,
        prompt: str,
        *,
        max_tokens: int,
        timeout: float,
        operation: str = "completion",
    ) -> None:
        """`POST /v1/completions` with a body gpumux shapes itself (warm-up, health canary);
        2xx or raise (`BackendControlError.status` tells a refusal from a broken engine)."""
        await self._call(
            operation,
            "POST",
            "/v1/completions",
            json_body={"model": model_alias, "prompt": prompt, "max_tokens": max_tokens},
            timeout=timeout,
        )

    def _url(self, path: str) -> str:
        return self.base_url + path

    async def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        params: _Params = (),
        json_body: Mapping[str, object] | None = None,
        timeout: float,
    ) -> object:
        """One request; the decoded JSON body (None if empty), or BackendControlError."""
        try:
            async with self._session.request(
                method,
                self._url(path),
                params=list(params),
                json=json_body,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError as exc:  # aiohttp's timeout errors subclass TimeoutError
            raise BackendControlError(
                operation, None, f"timed out after {timeout:g}s ({type(exc).__name__})"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendControlError(operation, None, _describe(exc)) from exc
        if not 200 <= status < 300:
            raise BackendControlError(operation, status, _short(raw) or "empty reply")
        if not raw.strip():
            return None
        try:
            decoded: object = json.loads(raw)
        except ValueError as exc:
            raise BackendControlError(operation, status, "reply is not JSON") from exc
        return decoded


def _short(raw: bytes) -> str:
    text = " ".join(raw.decode("utf-8", errors="replace").split())
    if len(text) > _DETAIL_MAX_CHARS:
        return text[: _DETAIL_MAX_CHARS - 1] + "…"
    return text


def _describe(exc: BaseException) -> str:
    message = _short(str(exc).encode())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
