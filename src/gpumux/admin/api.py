"""The admin API and dashboard on `admin_port` (design §1 Admin).

Owns: the routes — `GET /` (dashboard) and its static files, `GET /api/status`,
`POST /api/switch`, `POST /api/models/{model}/{wake|evict|pin|unpin|restart|reset}` (evict takes
`{"force": true}` for a pinned model),
`POST /api/mode`, `GET /api/events` (SSE), `GET /api/logs/{model}`, `POST /api/chat`,
`GET /api/requests` (the request log), `GET /api/node` (read-only node status for a
fleet), `GET /api/openapi.json` — plus bearer-token auth on `/api/*`, OpenAI-shaped errors
and security headers (a strict CSP: the page loads nothing from anywhere else).
Does not: decide. Every command goes to the scheduler's owner task as a typed admin
input and answers with its `AdminReply` (a refusal maps to an HTTP status here); status
and node status are built from the scheduler's frozen view.

Open without a token: the dashboard's static files and the OpenAPI document (neither
holds data). Everything else under `/api/` needs the token when one is configured; the
page sends it as a header from JavaScript (never a cookie), so it is not CSRF-able.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from importlib.resources import files

import structlog
from aiohttp import web

from gpumux.admin.auth import AdminToken
from gpumux.admin.chat import ChatForwarder
from gpumux.admin.events import EventHub
from gpumux.admin.node import NodeStatus, node_json
from gpumux.admin.openapi import openapi_document
from gpumux.admin.status import StatusSources, build_status
from gpumux.core.errors import (
    GpumuxError,
    InvalidJson,
    MethodNotAllowed,
    ModelNotFound,
    RequestTooLarge,
    RouteNotFound,
    UpstreamTimeout,
    openai_envelope,
)
from gpumux.http.body import json_object, read_body
from gpumux.http.errors import error_response
from gpumux.scheduler.inputs import (
    AdminCommand,
    AdminEvict,
    AdminMode,
    AdminPin,
    AdminReset,
    AdminRestart,
    AdminSwitch,
)
from gpumux.scheduler.messages import AdminRefusal, AdminReply, Mode, Note
from gpumux.scheduler.runner import Scheduler

log = structlog.get_logger(__name__)

#: Quick commands (evict, reset, mode auto) answer within one scheduler step.
QUICK_REPLY_SECS = 10.0
MAX_LOG_LINES = 500
DEFAULT_REQUEST_ROWS = 100
MAX_REQUEST_ROWS = 10_000
#: The request log's read-out: (limit, model or None) → records, newest first.
RequestRows = Callable[[int, str | None], list[dict[str, object]]]


def _no_request_log(limit: int, model: str | None) -> list[dict[str, object]]:
    return []


DASHBOARD_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "chart.js": "text/javascript",
    "style.css": "text/css",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
#: Why the scheduler refused -> HTTP status and OpenAI (type, code).
_REFUSALS: dict[AdminRefusal, tuple[int, str, str]] = {
    AdminRefusal.BAD_REQUEST: (400, "invalid_request_error", "invalid_request"),
    AdminRefusal.UNKNOWN_MODEL: (404, "invalid_request_error", "model_not_found"),
    AdminRefusal.BUSY: (409, "invalid_request_error", "model_busy"),
    AdminRefusal.SHUTTING_DOWN: (503, "server_error", "model_unavailable"),
    AdminRefusal.START_FAILED: (503, "server_error", "model_unavailable"),
}


class AdminApi:
    def __init__(
        self,
        scheduler: Scheduler,
        status: StatusSources,
        token: AdminToken,
        chat: ChatForwarder,
        recent_output: Callable[[str], list[str]],
        node_status: Callable[[], NodeStatus],
        requests: RequestRows = _no_request_log,
    ) -> None:
        self._scheduler = scheduler
        self._node_status = node_status
        self._requests = requests
        self._status = status
        self._token = token
        self._chat = chat
        self._recent_output = recent_output
        self.events = EventHub()
        status.observer.listeners.append(self.events.publish)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024, middlewares=[self._middleware])
        static = {name: _read_asset(name) for name in DASHBOARD_FILES}
        for name, body in static.items():
            path = "/" if name == "index.html" else f"/{name}"
            app.router.add_get(path, _static_handler(body, DASHBOARD_FILES[name]))
        app.router.add_get("/api/openapi.json", self._openapi)
        app.router.add_get("/api/status", self._get_status)
        app.router.add_get("/api/node", self._get_node)
        app.router.add_post("/api/switch", self._switch)
        app.router.add_post("/api/models/{model}/{action}", self._model_action)
        app.router.add_post("/api/mode", self._mode)
        app.router.add_get("/api/events", self.events.stream)
        app.router.add_get("/api/logs/{model}", self._logs)
        app.router.add_get("/api/requests", self._request_log)
        app.router.add_post("/api/chat", self._chat.handle)
        return app

    def close(self) -> None:
        """End live event streams, so shutdown does not wait on them."""
        self.events.close()

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            if request.path.startswith("/api/") and request.path != "/api/openapi.json":
                self._token.check(request.headers.get("Authorization"))
            response = await handler(request)
        except GpumuxError as exc:
            response = error_response(exc)
        except web.HTTPNotFound:
            response = error_response(RouteNotFound(f"Unknown route {request.path[:200]}."))
        except web.HTTPMethodNotAllowed:
            response = error_response(MethodNotAllowed(f"{request.method} is not allowed here."))
        except web.HTTPRequestEntityTooLarge:
            response = error_response(RequestTooLarge("The request body is too large."))
        if response.status >= 400 and not response.prepared:
            _log_rejection(request, response.status)
        if not response.prepared:
            response.headers.update(SECURITY_HEADERS)
        return response

    # ---- read-only -------------------------------------------------------------------

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    async def _get_status(self, request: web.Request) -> web.Response:
        await self._status.settle()
        return web.json_response(build_status(self._status), dumps=_dumps)

    async def _get_node(self, request: web.Request) -> web.Response:
        await self._status.settle()
        return web.json_response(node_json(self._node_status()))

    async def _logs(self, request: web.Request) -> web.Response:
        model = self._known_model(request.match_info["model"])
        try:
            limit = max(1, min(int(request.query.get("lines", "200")), MAX_LOG_LINES))
        except ValueError:
            limit = 200
        lines = self._recent_output(model)[-limit:]
        return web.json_response({"model": model, "lines": lines})

    async def _request_log(self, request: web.Request) -> web.Response:
        """The latest proxied requests, newest first: never any prompt or completion text."""
        try:
            limit = int(request.query.get("limit", DEFAULT_REQUEST_ROWS))
        except ValueError:
            raise InvalidJson("`limit` must be an integer.") from None
        limit = max(1, min(limit, MAX_REQUEST_ROWS))
        model = request.query.get("model") or None
        rows = self._requests(limit, model)
        return web.json_response({"requests": rows}, dumps=_dumps)

    # ---- commands ----------------------------------------------------------------------

    async def _switch(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        model = body.get("model")
        if not isinstance(model, str):
            raise InvalidJson("`model` (a string) is required.")
        model = self._known_model(model)
        return await self._run(
            "switch", model, AdminSwitch(model), self._switch_timeout(model, body)
        )

    async def _model_action(self, request: web.Request) -> web.Response:
        model = self._known_model(request.match_info["model"])
        action = request.match_info["action"]
        force = action == "evict" and (await _json_body(request)).get("force") is True
        inputs: dict[str, tuple[AdminCommand, float]] = {
            "wake": (AdminSwitch(model), self._switch_timeout(model, {})),
            "evict": (AdminEvict(model, force=force), QUICK_REPLY_SECS),
            "pin": (AdminPin(model, pinned=True), QUICK_REPLY_SECS),
            "unpin": (AdminPin(model, pinned=False), QUICK_REPLY_SECS),
            "restart": (AdminRestart(model), self._switch_timeout(model, {})),
            "reset": (AdminReset(model), QUICK_REPLY_SECS),
        }
        if action not in inputs:
            actions = "wake, evict, pin, unpin, restart or reset"
            raise RouteNotFound(f"Unknown action `{action}` ({actions}).")
        command, timeout = inputs[action]
        return await self._run(action, model, command, timeout)

    async def _mode(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        mode = body.get("mode")
        model = body.get("model")
        if mode not in ("auto", "manual") or not (model is None or isinstance(model, str)):
            raise InvalidJson('`mode` must be "auto" or "manual"; `model` a string if given.')
        if model is not None:
            model = self._known_model(model)
        timeout = self._switch_timeout(model, body) if mode == "manual" else QUICK_REPLY_SECS
        return await self._run(f"mode_{mode}", model, AdminMode(Mode(mode), model), timeout)

    async def _run(
        self, name: str, model: str | None, command: AdminCommand, timeout: float
    ) -> web.Response:
        self._status.observer.note(Note("admin_command", {"command": name, "model": model}))
        try:
            reply = await self._scheduler.admin(command, timeout=timeout)
        except TimeoutError:
            raise UpstreamTimeout(
                f"`{name}` did not finish within {timeout:g}s; it goes on in the background."
            ) from None
        return _reply_response(reply)

    def _known_model(self, model: str) -> str:
        if model not in self._scheduler.view.models:
            raise ModelNotFound(f"The model `{model}` does not exist.", param="model")
        return model

    def _switch_timeout(self, model: str | None, body: dict[str, object]) -> float:
        """Long enough for drain, evict and a cold start with warm-up; or less if asked."""
        config = self._status.config()
        sup, policy = config.supervision, config.policy
        entry = config.models.get(model) if model else None
        startup = entry.startup_timeout_secs if entry is not None else sup.wake_timeout_secs
        bound = (
            policy.drain_timeout_secs
            + sup.sleep_timeout_secs
            + sup.stop_grace_secs
            + max(startup, sup.wake_timeout_secs)
            + sup.warmup_timeout_secs
        )
        asked = body.get("timeout_secs")
        if isinstance(asked, int | float) and not isinstance(asked, bool) and asked > 0:
            return min(float(asked), bound)
        return bound


def _reply_response(reply: AdminReply) -> web.Response:
    if reply.refusal is None:
        return web.json_response({"ok": True, "detail": reply.detail, **reply.data}, dumps=_dumps)
    status, error_type, code = _REFUSALS[reply.refusal]
    return web.json_response(openai_envelope(reply.detail, error_type, code), status=status)


async def _json_body(request: web.Request) -> dict[str, object]:
    return json_object(await read_body(request) or b"{}")


def _log_rejection(request: web.Request, status: int) -> None:
    """One warning line per refused request (no body, no query, no traceback)."""
    path = request.path[:200]
    log.warning("admin_request_rejected", status=status, method=request.method, path=path)


def _dumps(value: object) -> str:
    return json.dumps(value, default=str)


def _read_asset(name: str) -> bytes:
    return files("gpumux.admin").joinpath("dashboard", name).read_bytes()


def _static_handler(
    body: bytes, content_type: str
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8")

    return handle
