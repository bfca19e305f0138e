"""Fuzz the admin API from the OpenAPI document it serves (`GET /api/openapi.json`).

Every operation the document lists is called with path parameters drawn from the
parameter's schema and from odd segments (`..`, encoded slashes and NULs, invalid
percent-encodings, bidi controls), bodies (valid by the operation's request schema — see
tests/support/security_openapi_strategies.py, schemathesis's idea for this document — hand-shaped
with wrong types, documents nested to any depth, random JSON, random bytes) and three
kinds of credentials (none, wrong, right); every route's whole path is also mangled.
Properties:
- a protected route answers 401 without a token and 403 with a wrong one, before looking
  at anything else; only the documented open routes answer without one;
- never a 500; with the right token every status is one the document lists for that
  operation (`/api/chat` relays the proxy's statuses, so it is held to "no 5xx" only);
- every error is OpenAI-shaped JSON;
- afterwards the daemon still runs and both models still serve through the proxy.
"""

from __future__ import annotations

import http.client
import json
from collections import Counter
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support.client import chat_body, get_json, post
from tests.support.daemon import RunningDaemon
from tests.support.security_openapi_strategies import ODD_SEGMENTS, from_schema
from tests.support.security_strategies import documents

pytestmark = pytest.mark.integration

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays deterministic
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ODD_NAMES = ["a", "b", "nope", "", *ODD_SEGMENTS]
#: Values the server knows, tried beside whatever the schema allows.
HINTS = {"model": st.sampled_from(["a", "b"]), "timeout_secs": st.sampled_from([0.5, 2.0])}


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path template, operation) for every operation in the document."""
    found = []
    for template, item in document["paths"].items():
        for method, operation in item.items():
            if method in ("get", "post", "put", "delete", "patch"):
                found.append((method.upper(), template, {**operation, "_item": item}))
    return found


def is_open(operation: dict[str, Any], document: dict[str, Any]) -> bool:
    return operation.get("security", document.get("security")) == []


def documented(operation: dict[str, Any]) -> set[int]:
    return {int(code) for code in operation.get("responses", {}) if code.isdigit()}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def request_schema(operation: dict[str, Any]) -> dict[str, Any] | None:
    content = operation.get("requestBody", {}).get("content", {})
    schema: dict[str, Any] | None = content.get("application/json", {}).get("schema")
    return schema


@st.composite
def bodies(draw: st.DrawFn, operation: dict[str, Any], document: dict[str, Any]) -> bytes | None:
    kind = draw(st.sampled_from(["schema", "schema", "shaped", "json", "deep", "bytes", "none"]))
    schema = request_schema(operation)
    if kind == "schema" and schema is not None:
        return json.dumps(draw(from_schema(schema, document, HINTS))).encode()
    if kind == "deep":
        return draw(documents(model=st.sampled_from(["a", "nope"]))).data
    if kind == "none":
        return None
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    body: dict[str, Any] = {}
    if draw(st.booleans()):
        body["model"] = draw(st.sampled_from(ODD_NAMES) | json_values)
    if draw(st.booleans()):
        body["mode"] = draw(st.sampled_from(["auto", "manual", "sideways"]) | json_values)
    if draw(st.booleans()):
        body["timeout_secs"] = draw(
            st.floats(min_value=0.01, max_value=3) | st.sampled_from([0, -1, "5", None, 1e308])
        )
    if draw(st.booleans()):
        body["messages"] = [{"role": "user", "content": draw(st.text(max_size=20))}]
    return json.dumps(body, allow_nan=True).encode()


@st.composite
def calls(
    draw: st.DrawFn, ops: list[tuple[str, str, dict[str, Any]]], document: dict[str, Any]
) -> tuple[str, str, dict[str, Any], bytes | None, str]:
    method, template, operation = draw(st.sampled_from(ops))
    path = template
    parameters = operation["_item"].get("parameters", []) + operation.get("parameters", [])
    schemas = {p["name"]: p.get("schema", {}) for p in parameters if p.get("in") == "path"}
    for name in ("model", "action"):
        if "{" + name + "}" in path:
            known = from_schema(schemas.get(name, {"type": "string"}), document, HINTS)
            value = draw(
                known.filter(lambda v: isinstance(v, str))
                | st.sampled_from([*ODD_NAMES, "explode"])
            )
            # Raw only what an HTTP client can put in a request line: printable ASCII, no
            # space (a control character is refused by http.client before it is sent).
            printable = value.isascii() and value.isprintable() and " " not in value
            raw = draw(st.booleans()) and printable
            path = path.replace("{" + name + "}", value if raw else quote(value, safe=""))
    if template == "/api/events":
        path += "?replay=" + str(draw(st.integers(-5, 10_000)))
    elif template.startswith("/api/logs"):
        path += "?lines=" + draw(st.sampled_from(["5", "-1", "0", "x", "99999999999"]))
    auth = draw(st.sampled_from(["none", "wrong", "right"]))
    return method, path, operation, draw(bodies(operation, document)), auth


def send(
    port: int,
    method: str,
    path: str,
    body: bytes | None,
    auth: str,
    *,
    token: str,
    headers_only: bool,
) -> tuple[int, dict[str, str], bytes]:
    """One admin call; `auth` is "none", "wrong" or "right" (`token` as the bearer)."""
    headers = {"Content-Type": "application/json"}
    if auth == "right":
        headers["Authorization"] = f"Bearer {token}"
    elif auth == "wrong":
        headers["Authorization"] = "Bearer not-the-token"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        got = {k.lower(): v for k, v in response.getheaders()}
        if headers_only and response.status == 200:
            return response.status, got, b""  # an SSE stream: the headers say enough
        return response.status, got, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def document(fuzz_daemon: RunningDaemon) -> dict[str, Any]:
    port = fuzz_daemon.config["admin_port"]
    found: dict[str, Any] = get_json(f"http://127.0.0.1:{port}/api/openapi.json")
    assert found["paths"], "the admin API documents no route"
    return found


def test_admin_api_fuzzed_from_its_openapi_never_500s_or_skips_auth(
    fuzz_daemon: RunningDaemon, document: dict[str, Any], admin_token: str
) -> None:
    port = fuzz_daemon.config["admin_port"]
    ops = operations(document)
    seen: Counter[str] = Counter()

    @FUZZ
    @given(call=calls(ops, document))
    def fuzz(call: tuple[str, str, dict[str, Any], bytes | None, str]) -> None:
        method, path, operation, body, auth = call
        status, headers, payload = send(
            port,
            method,
            path,
            body,
            auth,
            token=admin_token,
            headers_only=path.startswith("/api/events"),
        )
        event(f"{auth} {status}")
        seen[f"{auth} {status}"] += 1
        assert status != 500, (method, path, payload[:300])
        protected = not is_open(operation, document)
        if protected and auth == "none":
            assert status == 401, (method, path, status)
        elif protected and auth == "wrong":
            assert status == 403, (method, path, status)
        assert status < 500 or status in documented(operation), (method, path, payload[:300])
        if auth == "right" and path != "/api/chat":
            assert status in documented(operation), (method, path, status, payload[:300])
        if status >= 400:
            assert headers.get("content-type", "").startswith("application/json"), (
                method,
                path,
                status,
                payload[:200],
            )
            error = json.loads(payload)["error"]
            assert set(error) == {"message", "type", "param", "code"}, error

    fuzz()
    # The fuzz reached the handlers, not only the auth check.
    assert sum(n for k, n in seen.items() if k.startswith("right 2")) >= 5, seen
    assert sum(n for k, n in seen.items() if k.startswith("right 4")) >= 5, seen
    assert fuzz_daemon.process.poll() is None, "gpumux died"
    code, _, _ = send(
        port, "GET", "/api/status", None, "right", token=admin_token, headers_only=False
    )
    assert code == 200
    # Back to automatic mode (fuzzing may have pinned a model), then both models serve.
    auto = b'{"mode": "auto"}'
    send(port, "POST", "/api/mode", auto, "right", token=admin_token, headers_only=False)
    for model in ("a", "b"):
        reply = post(fuzz_daemon, "/v1/chat/completions", chat_body(model), timeout=60)
        assert reply.status == 200, (model, reply.body)


#: Ways to mangle a whole route path; each keeps it a valid HTTP request target.
MANGLES = [
    lambda p: p + "/",
    lambda p: p.replace("/", "//"),
    lambda p: p.replace("/", "/./"),
    lambda p: p.replace("/", "%2F"),
    lambda p: p.replace("/api/", "/api/../api/"),
    lambda p: p.replace("/api/", "/API/"),
    lambda p: p + ";x=1",
    lambda p: p + "%00",
    lambda p: p + "?%ff=%zz&&=",
    lambda p: p + "#fragment",
    lambda p: p.replace("a", "%61"),
    lambda p: "/" + "../" * 5 + p.lstrip("/"),
]


def test_every_route_with_a_mangled_path_never_500s(
    fuzz_daemon: RunningDaemon, document: dict[str, Any], admin_token: str
) -> None:
    port = fuzz_daemon.config["admin_port"]
    for method, template, _ in operations(document):
        path = template.replace("{model}", "a").replace("{action}", "reset")
        for mangle in MANGLES:
            target = mangle(path)
            for auth in ("none", "right"):
                status, headers, payload = send(
                    port,
                    method,
                    target,
                    b"{}",
                    auth,
                    token=admin_token,
                    headers_only="events" in target.lower(),
                )
                assert status < 500, (method, target, payload[:300])
                if status >= 400:
                    assert headers.get("content-type", "").startswith("application/json"), (
                        method,
                        target,
                        status,
                    )
                    assert set(json.loads(payload)["error"]) == {"message", "type", "param", "code"}
    assert fuzz_daemon.process.poll() is None
