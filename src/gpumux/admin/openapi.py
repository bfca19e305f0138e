"""The admin API's OpenAPI 3.1 description (`GET /api/openapi.json`).

Owns: the machine-readable contract of every admin route — paths, methods, bodies,
status codes, the bearer scheme — kept beside the routes (a test checks that both list
the same routes), for clients and for API fuzzing.
Does not: serve or validate anything; it is data.
"""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/responses/Error"}
_AUTH_ERRORS = {"401": _ERROR, "403": _ERROR}
_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _command(summary: str, body: dict[str, Any] | None, slow: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": _json({"$ref": "#/components/schemas/AdminReply"}),
            "400": _ERROR,
            "404": _ERROR,
            "409": _ERROR,
            "503": _ERROR,
            **({"504": _ERROR} if slow else {}),
            **_AUTH_ERRORS,
        },
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    return operation


_TIMEOUT = {"type": "number", "exclusiveMinimum": 0, "description": "Wait at most this long."}


def openapi_document() -> dict[str, Any]:
    text = {"description": "A dashboard file", "content": {"text/plain": {}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "gpumux admin API", "version": "1"},
        "security": [{"bearer": []}],
        "paths": {
            "/": {"get": {"summary": "Dashboard", "security": [], "responses": {"200": text}}},
            "/app.js": {"get": {"security": [], "responses": {"200": text}}},
            "/chart.js": {"get": {"security": [], "responses": {"200": text}}},
            "/style.css": {"get": {"security": [], "responses": {"200": text}}},
            "/api/openapi.json": {
                "get": {"summary": "This document", "security": [], "responses": {"200": text}}
            },
            "/api/status": {
                "get": {
                    "summary": "Per-model state, switches, costs and memory",
                    "responses": {"200": _json({"type": "object"}), **_AUTH_ERRORS},
                }
            },
            "/api/node": {
                "get": {
                    "summary": "Read-only node status for a fleet (never wakes, resets a TTL "
                    "or takes a lease)",
                    "responses": {"200": _json({"type": "object"}), **_AUTH_ERRORS},
                }
            },
            "/api/switch": {
                "post": _command(
                    "Force a switch to a model (drain, evict, wake) through the scheduler",
                    {
                        "type": "object",
                        "required": ["model"],
                        "properties": {"model": {"type": "string"}, "timeout_secs": _TIMEOUT},
                    },
                    slow=True,
                )
            },
            "/api/models/{model}/{action}": {
                "parameters": [
                    _MODEL,
                    {
                        "name": "action",
                        "in": "path",
                        "required": True,
                        "schema": {"enum": ["wake", "evict", "pin", "unpin", "restart", "reset"]},
                    },
                ],
                "post": _command(
                    'Wake, evict (`{"force": true}` for a pinned model), pin, unpin, '
                    "restart or reset one model",
                    None,
                    slow=True,
                ),
            },
            "/api/mode": {
                "post": _command(
                    "Automatic switching, or manual with one pinned model",
                    {
                        "type": "object",
                        "required": ["mode"],
                        "properties": {
                            "mode": {"enum": ["auto", "manual"]},
                            "model": {"type": "string"},
                            "timeout_secs": _TIMEOUT,
                        },
                    },
                    slow=True,
                )
            },
            "/api/events": {
                "get": {
                    "summary": "Server-sent events: history replay, then live",
                    "parameters": [
                        {"name": "replay", "in": "query", "schema": {"type": "integer"}},
                        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {"description": "SSE", "content": {"text/event-stream": {}}},
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/api/logs/{model}": {
                "get": {
                    "summary": "Recent backend output lines",
                    "parameters": [
                        _MODEL,
                        {"name": "lines", "in": "query", "schema": {"type": "integer"}},
                    ],
                    "responses": {
                        "200": _json({"type": "object"}),
                        "404": _ERROR,
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/api/requests": {
                "get": {
                    "summary": "The latest proxied requests, newest first (never any text)",
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                        {"name": "model", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _json({"type": "object"}),
                        "400": _ERROR,
                        **_AUTH_ERRORS,
                    },
                }
            },
            "/api/chat": {
                "post": {
                    "summary": "A chat completion through the proxy (streams when asked)",
                    "parameters": [
                        {"name": "X-Gpumux-Api-Key", "in": "header", "schema": {"type": "string"}}
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "responses": {
                        "200": {"description": "JSON or SSE from the proxy"},
                        "400": _ERROR,
                        "502": _ERROR,
                        **_AUTH_ERRORS,
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "AdminReply": {
                    "type": "object",
                    "required": ["ok", "detail"],
                    "properties": {
                        "ok": {"type": "boolean"},
                        "detail": {"type": "string"},
                        "model": {"type": "string"},
                        "switch_id": {"type": "integer"},
                        "victims": {"type": "array", "items": {"type": "string"}},
                        "outcome": {"type": "string"},
                        "duration_s": {"type": "number"},
                        "phases": {"type": "object", "additionalProperties": {"type": "number"}},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["message", "type", "param", "code"],
                            "properties": {
                                "message": {"type": "string"},
                                "type": {"type": "string"},
                                "param": {"type": ["string", "null"]},
                                "code": {"type": ["string", "null"]},
                            },
                        }
                    },
                },
            },
            "responses": {
                "Error": _json({"$ref": "#/components/schemas/Error"}, "OpenAI-shaped error")
            },
        },
    }
