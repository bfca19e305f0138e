"""A backend that answers every proxied request with what it received (method, path, headers,
the body and its SHA-256).

Owns: nothing but a mirror. gpumux starts it like `vllm serve` (`vllm_command` points here,
unknown flags are ignored), so a test can see exactly which headers and path gpumux
forwarded — something the mock vLLM does not record. `/health` answers 200 and
`/mock/events` an empty list, so the daemon's readiness and the harness work unchanged.

Run as ``python tests/support/echo_backend.py serve MODEL --port N [any flags]``; a test
config names it with `vllm_command=list(ECHO_COMMAND)`.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from aiohttp import web

#: The `vllm_command` that runs this backend with the test's interpreter.
ECHO_COMMAND = (sys.executable, str(Path(__file__).resolve()))


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def events(request: web.Request) -> web.Response:
    return web.json_response({"events": []})


async def mirror(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode(errors="replace"),
            "body_sha256": hashlib.sha256(body).hexdigest(),  # byte-exact forwarding
        },
        headers={
            # Hop-by-hop on the way back: a proxy must not pass these to its client.
            "Keep-Alive": "timeout=99",
            "X-Backend-Private": "only-for-the-next-hop",
            "Connection": "X-Backend-Private",
            "X-Backend-Public": "kept",
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="echo_backend")
    parser.add_argument("command")
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args, _unknown = parser.parse_known_args(argv)
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/mock/events", events)
    app.router.add_route("*", "/{tail:.*}", mirror)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
