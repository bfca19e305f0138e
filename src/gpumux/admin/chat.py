"""`POST /api/chat`: the dashboard's chat box, forwarded to the proxy with streaming.

Owns: relaying one chat completion from the admin origin to the proxy's
`/v1/chat/completions` on loopback, byte for byte (SSE included), with the API key the
operator pasted (`X-Gpumux-Api-Key`, kept in the browser's sessionStorage) sent as the
proxy's `Authorization: Bearer`.
Does not: schedule or touch backends — the proxy does, so the request is queued,
switched to, counted and timed like any client's.

Why a route here instead of CORS on the proxy: the dashboard then talks to one origin
only, and the proxy port keeps answering no cross-origin browser at all.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from gpumux.core.errors import BackendUnreachable, UpstreamTimeout
from gpumux.http.body import peek, read_body

API_KEY_HEADER = "X-Gpumux-Api-Key"
_PASSED_BACK = ("Content-Type", "Retry-After", "X-Request-Id", "WWW-Authenticate")


class ChatForwarder:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        proxy_url: str,
        *,
        connect_timeout_secs: float,
        idle_timeout_secs: float,
    ) -> None:
        self._session = session
        self._url = proxy_url.rstrip("/") + "/v1/chat/completions"
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_secs, sock_read=idle_timeout_secs
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await read_body(request)
        peek(body)  # the proxy checks it again; a bad body stops here, before any relay
        headers = {"Content-Type": "application/json"}
        key = request.headers.get(API_KEY_HEADER, "").strip()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            upstream = await self._session.post(
                self._url, data=body, headers=headers, timeout=self._timeout
            )
        except TimeoutError:
            raise UpstreamTimeout("The proxy did not answer in time.", retry_after=5) from None
        except aiohttp.ClientError as exc:
            raise BackendUnreachable(f"The proxy is unreachable: {exc}", retry_after=5) from None
        # Headers are out once prepared, so a broken relay can only close the stream (the
        # proxy has already sent an error event and [DONE] for failures it saw itself).
        try:
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: upstream.headers[k] for k in _PASSED_BACK if k in upstream.headers},
            )
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (aiohttp.ClientError, TimeoutError):
                return response
            await response.write_eof()
            return response
        finally:
            upstream.close()
