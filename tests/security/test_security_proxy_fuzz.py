"""Fuzz the proxy port of the real daemon: odd methods, paths, headers and bodies.

Properties, for every request hypothesis makes up (bodies include documents nested to
any depth, from tests/security/strategies.py):
- never a 5xx from gpumux with healthy backends (no 500, no crash, no hang);
- every error body is OpenAI-shaped JSON (`{"error": {message, type, param, code}}`),
  the HTTP parser's own refusals included (431, 414, 400: see http/listener.py);
- vLLM's unauthenticated dev routes are never reached: afterwards the mock backends have
  recorded no sleep / wake_up / collective_rpc / reset_prefix_cache, and their fault
  knobs (the mock's private `/mock/faults`) are untouched;
- the daemon and its backends are the same processes at the end (nothing crashed).
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support.backend import backend_events, backend_state
from tests.support.client import get_json
from tests.support.daemon import RunningDaemon
from tests.support.security_strategies import documents

pytestmark = pytest.mark.integration

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays deterministic
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DEV_EVENTS = {"sleep", "wake_up", "collective_rpc", "reset_prefix_cache"}
FORWARDED = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/tokenize",
    "/detokenize",
]
SEGMENTS = [
    "v1", "chat", "completions", "embeddings", "responses", "tokenize", "models", "health",
    "sleep", "wake_up", "collective_rpc", "server_info", "is_sleeping", "reset_prefix_cache",
    "mock", "faults", "events", "state", "metrics", "..", ".", "%2e%2e", "%2E%2e", "%2f",
    "%2F", "%252e%252e", "..%2f", "%5c", "\\", ";", "%00", "~", "", "v1%2f..%2fsleep",
]  # fmt: skip
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT"]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/json, text/plain",
    "",
]
VALID_CHAT = json.dumps(
    {"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
).encode()
#: Headers http.client or the harness must own (framing); fuzzing them tests http.client.
RESERVED = {"content-length", "transfer-encoding", "host", "connection"}
TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~"


def paths() -> st.SearchStrategy[str]:
    joined = st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=6).map("/".join)
    built = st.tuples(st.sampled_from(["/", "//", "/./", "/v1/../"]), joined).map("".join)
    query = st.sampled_from(["", "?level=1", "?x=../../sleep", "?tags=weights&mode=abort", "?%00"])
    absolute = st.sampled_from(
        [
            "http://127.0.0.1/sleep",
            "http://127.0.0.1:1/v1/chat/completions",
            "*",
            "sleep",
            "/v1/chat/completions/",
            "/V1/CHAT/COMPLETIONS",
            "/v1/chat/completions;x=1",
            "/v1/chat//completions",
            "/v1/chat/completions%2f..%2f..%2fsleep",
        ]
    )
    return st.one_of(st.sampled_from(FORWARDED), built, absolute).flatmap(
        lambda p: query.map(lambda q: p + q)
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["json", "chat", "chat", "chat", "bytes", "empty", "big", "deep"]))
    if kind == "deep":
        deep = draw(documents(model=st.sampled_from(["a", "b", "nope"]))).data
        return deep[: draw(st.integers(0, len(deep)))] if draw(st.booleans()) else deep
    if kind == "json":
        return json.dumps(draw(json_values), allow_nan=True).encode()
    if kind == "chat":
        body: dict[str, Any] = draw(st.dictionaries(st.text(max_size=12), json_values, max_size=4))
        body["model"] = draw(
            st.sampled_from(["a", "b"])
            | st.sampled_from(["nope", "", "a/../b", "A", "../a"])
            | json_values
        )
        if draw(st.integers(0, 3)):
            body["messages"] = [{"role": "user", "content": draw(st.text(max_size=50))}]
        if draw(st.booleans()):
            body["max_tokens"] = draw(st.integers(-5, 5000))
        if draw(st.booleans()):
            body["stream"] = draw(st.booleans())
        return json.dumps(body, allow_nan=True).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "big":
        return b'{"model": "a", "pad": "' + b"x" * draw(st.integers(200_000, 300_000)) + b'"}'
    return b""


header_names = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=30).filter(
    lambda n: n.lower() not in RESERVED
)
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=200,
) | st.integers(5000, 9000).map(lambda n: "v" * n)


def send(
    port: int, method: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(
            method, path, body=body if method not in ("GET", "HEAD") else None, headers=headers
        )
        response = conn.getresponse()
        payload = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, payload
    finally:
        conn.close()


def _code(payload: bytes) -> object:
    try:
        return json.loads(payload)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def assert_sane(status: int, headers: dict[str, str], payload: bytes, method: str) -> None:
    """No 5xx; an error is OpenAI-shaped JSON unless the HTTP parser refused the request."""
    assert status < 500, (status, payload[:300])
    if status < 400 or method == "HEAD":
        return
    content_type = headers.get("content-type", "")
    assert content_type.startswith("application/json"), (status, headers, payload[:300])
    error = json.loads(payload)["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert isinstance(error["message"], str)


@pytest.fixture(scope="module")
def baseline(fuzz_daemon: RunningDaemon) -> dict[str, int]:
    """Start both backends through the proxy and remember their pids."""
    for model in ("a", "b"):
        status, _, payload = send(
            fuzz_daemon.config["port"],
            "POST",
            "/v1/chat/completions",
            json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 200, payload
    return {m: backend_state(fuzz_daemon, m)["pid"] for m in ("a", "b")}


def assert_untouched(daemon: RunningDaemon, pids: dict[str, int]) -> None:
    assert daemon.process.poll() is None, "gpumux died"
    for model, pid in pids.items():
        assert backend_state(daemon, model)["pid"] == pid, f"{model}'s backend was restarted"
        names = {e["event"] for e in backend_events(daemon, model)}
        assert not names & DEV_EVENTS, names & DEV_EVENTS
        faults = get_json(daemon.backend_url(model) + "/mock/faults")
        assert faults["http_error_status"] is None
        assert faults["crash_after_chunks"] is None
        assert not faults["fail_sleep"]


@FUZZ
@given(
    method=st.sampled_from(METHODS)
    | st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=10),
    path=paths(),
    body=st.sampled_from([VALID_CHAT, b"", b"{}"]),
)
def test_random_methods_and_paths_never_reach_dev_routes_or_500(
    fuzz_daemon: RunningDaemon, baseline: dict[str, int], method: str, path: str, body: bytes
) -> None:
    status, headers, payload = send(
        fuzz_daemon.config["port"], method, path, body, {"Content-Type": "application/json"}
    )
    event(f"status {status}")
    assert_sane(status, headers, payload, method)
    bare = path.split("?", 1)[0]
    if bare not in FORWARDED and bare not in ("/health", "/v1/models"):
        assert status in (400, 404, 405), (method, path, status)


@FUZZ
@given(
    path=st.sampled_from(FORWARDED),
    content_type=st.just("application/json")
    | st.sampled_from(CONTENT_TYPES)
    | st.text(max_size=40).filter(lambda t: "\n" not in t and "\r" not in t),
    extra=st.dictionaries(header_names, header_values, max_size=6),
    body=request_bodies(),
)
def test_random_headers_content_types_and_bodies_get_openai_shaped_answers(
    fuzz_daemon: RunningDaemon,
    baseline: dict[str, int],
    path: str,
    content_type: str,
    extra: dict[str, str],
    body: bytes,
) -> None:
    headers = {**extra, "Content-Type": content_type}
    try:
        status, got, payload = send(fuzz_daemon.config["port"], "POST", path, body, headers)
    except ValueError:
        event("refused by http.client")
        return  # http.client itself refuses to send such a header; nothing reached gpumux
    event(f"status {status} {_code(payload)}")
    assert_sane(status, got, payload, "POST")


def test_after_fuzzing_backends_are_untouched_and_still_serve(
    fuzz_daemon: RunningDaemon, baseline: dict[str, int]
) -> None:
    """Runs after the fuzz tests in this module (pytest keeps file order)."""
    assert_untouched(fuzz_daemon, baseline)
    for model in ("a", "b"):
        status, _, _ = send(
            fuzz_daemon.config["port"],
            "POST",
            "/v1/chat/completions",
            json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}]}).encode(),
            {"Content-Type": "application/json"},
        )
        assert status == 200
