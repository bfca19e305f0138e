"""Hostile JSON bodies against the real daemon: the named corpus, then documents of any
depth from hypothesis, on the proxy and on the admin API's JSON routes.

Properties, for every body:
- never a 5xx from gpumux; every refusal is a 4xx in the OpenAI error shape with the
  code the corpus names;
- a refused body reaches no backend and starts, stops or wakes none: model `c` (named by
  every body that must be refused) is never started, and backend `a` receives exactly
  the requests that were to be served (counted from the mock's own event log);
- the daemon logs one warning line per refusal and no traceback, and keeps serving.
"""

from __future__ import annotations

import http.client
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings

from gpumux.http.body import MAX_DEPTH
from tests.support.backend import backend_state, event_names
from tests.support.daemon import RunningDaemon, mock_model, running_daemon
from tests.support.metrics import metric_value
from tests.support.ports import free_port
from tests.support.security import ADMIN_TOKEN, FAST
from tests.support.security_corpus import BODY_LIMIT, CORPUS, REFUSED_MODEL, SERVED_MODEL, Case
from tests.support.security_strategies import Doc, documents

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
DEEP = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: Admin routes that read a JSON body; only bodies refused as JSON are sent to them (a
#: valid `{"model": "c"}` is a legitimate command to start `c`).
ADMIN_JSON_ROUTES = ("/api/switch", "/api/mode", "/api/chat")


class Tally:
    """What the module sent: requests a backend must have seen, refusals gpumux logged."""

    def __init__(self) -> None:
        self.served = 0
        self.refused: Counter[str] = Counter()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    """Model `a` (awake once asked) and model `c`, which nothing here may start."""
    tmp: Path = tmp_path_factory.mktemp("deep")
    models = {m: mock_model(extra_args=FAST) for m in (SERVED_MODEL, REFUSED_MODEL)}
    with running_daemon(
        tmp,
        models,
        env={"GPUMUX_SEC_ADMIN": ADMIN_TOKEN},
        admin_port=free_port(),
        admin_token_env="GPUMUX_SEC_ADMIN",
        max_request_body_bytes=BODY_LIMIT,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def tally(daemon: RunningDaemon) -> Tally:
    status, payload = send(daemon.config["port"], CHAT, _chat_body())
    assert status == 200, payload
    found = Tally()
    found.served = 1
    return found


def _chat_body() -> bytes:
    messages = [{"role": "user", "content": "hi"}]
    return json.dumps({"model": SERVED_MODEL, "max_tokens": 2, "messages": messages}).encode()


def send(
    port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})}
        )
        response = conn.getresponse()
        payload = response.read()
        assert response.status < 500, (response.status, payload[:300])
        if response.status >= 400:  # gpumux's refusals and the mock's alike
            assert response.getheader("Content-Type", "").startswith("application/json")
        return response.status, payload
    finally:
        conn.close()


def error_code(payload: bytes) -> str | None:
    error = json.loads(payload)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str)
    code: str | None = error["code"]
    return code


@pytest.mark.parametrize("case", CORPUS, ids=lambda case: case.name)
def test_corpus_on_the_proxy(daemon: RunningDaemon, tally: Tally, case: Case) -> None:
    status, payload = send(daemon.config["port"], CHAT, case.body)
    assert status == case.status, (case.name, payload[:300])
    if case.reaches_backend:
        # The mock records the requests it could parse; the backend's own 400s it does not.
        tally.served += case.status == 200
        return
    assert error_code(payload) == case.code, (case.name, payload[:300])
    tally.refused["request_rejected"] += 1


@DEEP
@given(doc=documents())
def test_documents_of_any_depth_on_the_proxy(daemon: RunningDaemon, tally: Tally, doc: Doc) -> None:
    too_deep = doc.depth > MAX_DEPTH
    body = doc.data.replace(b'"model": "a"', b'"model": "c"', 1) if too_deep else doc.data
    # A non-streaming reply is easier to read; the generator chose `stream` at random.
    body = body.replace(b'"stream": true', b'"stream": false', 1)
    status, payload = send(daemon.config["port"], CHAT, body)
    event(f"depth {'over' if too_deep else 'within'} the limit: {status}")
    if too_deep:
        assert status == 400
        assert error_code(payload) == "invalid_json"
        tally.refused["request_rejected"] += 1
    else:
        assert status == 200, payload[:300]
        tally.served += 1


@pytest.mark.parametrize("route", ADMIN_JSON_ROUTES)
def test_admin_json_routes_refuse_what_is_not_json(
    daemon: RunningDaemon, tally: Tally, route: str
) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for case in CORPUS:
        if case.code != "invalid_json" or not case.body:
            continue  # an empty admin body means `{}`; other refusals are proxy semantics
        status, payload = send(daemon.config["admin_port"], route, case.body, auth)
        assert status == 400, (route, case.name, payload[:300])
        assert error_code(payload) == "invalid_json", (route, case.name)
        tally.refused["admin_request_rejected"] += 1


def test_nothing_refused_reached_a_backend_and_the_daemon_is_clean(
    daemon: RunningDaemon, tally: Tally
) -> None:
    """Runs last in this module (pytest keeps file order)."""
    assert daemon.process.poll() is None, "gpumux died"
    assert metric_value(daemon, "gpumux_model_state", model=REFUSED_MODEL, state="stopped") == 1
    assert metric_value(daemon, "gpumux_switches_total", to=REFUSED_MODEL, outcome="ok") == 0
    assert event_names(daemon, SERVED_MODEL).count("request") == tally.served
    events = daemon.log_events()
    for name, count in tally.refused.items():
        logged = [e for e in events if e.get("event") == name]
        assert len(logged) == count, (name, len(logged), count)
        assert all(e["level"] == "warning" for e in logged)
    assert not [e for e in events if "exception" in e or "Traceback" in str(e)]
    pid = backend_state(daemon, SERVED_MODEL)["pid"]
    status, _ = send(daemon.config["port"], CHAT, _chat_body())
    assert status == 200
    assert backend_state(daemon, SERVED_MODEL)["pid"] == pid
