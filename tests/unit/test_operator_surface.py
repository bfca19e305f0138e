"""The operator surface's small pure-ish parts: token rules, metric merging, SSE hub, CLI text."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gpumux.admin.auth import AdminToken
from gpumux.admin.events import EventHub
from gpumux.admin.setup import proxy_url
from gpumux.cli.admin_client import format_status, format_switch, resolve_target
from gpumux.core.config import Config
from gpumux.core.config_rules import ConfigProblems
from gpumux.core.errors import AdminTokenInvalid, AdminTokenMissing
from gpumux.daemon.sdnotify import Notifier
from gpumux.telemetry.backend_metrics import render

pytestmark = pytest.mark.unit


def config(**top: Any) -> Config:
    return Config.model_validate({"models": {"a": {"model_path": "m", "port": 8100}}, **top})


def test_token_401_without_403_wrong_and_open_when_unset() -> None:
    """No bearer is 401, a wrong one 403, the right one passes; no token means open."""
    token = AdminToken("s3cret")
    with pytest.raises(AdminTokenMissing):
        token.check(None)
    with pytest.raises(AdminTokenMissing):
        token.check("Basic s3cret")
    with pytest.raises(AdminTokenInvalid):
        token.check("Bearer s3cre")
    token.check("Bearer s3cret")
    token.check("bearer s3cret")
    AdminToken(None).check(None)


def test_token_from_env_refuses_an_open_api_where_one_was_not_allowed() -> None:
    """A named-but-unset variable, or a public bind with no token, is a config problem."""
    named = config(admin_port=3001, admin_token_env="TOK")
    with pytest.raises(ConfigProblems, match="TOK"):
        AdminToken.from_env(named, serving=True, environ={})
    assert AdminToken.from_env(named, serving=True, environ={"TOK": "x"}).enabled
    assert not AdminToken.from_env(named, serving=False, environ={}).enabled
    public = config(admin_host="0.0.0.0")  # only --admin-port enables it
    with pytest.raises(ConfigProblems, match="admin_host"):
        AdminToken.from_env(public, serving=True, environ={})
    assert not AdminToken.from_env(config(), serving=True, environ={}).enabled


BACKEND = """# HELP vllm:num_requests_running Running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="x"} 2.0
# HELP vllm:prompt_tokens Prompt tokens.
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{model_name="x"} 7.0
"""


def test_backend_metrics_merge_with_a_model_label_and_scrape_success() -> None:
    """Each backend's samples gain model=<alias>; one HELP/TYPE per family; counters kept."""
    text = render({"a": BACKEND, "b": BACKEND, "c": None}).decode()
    assert text.count("# TYPE vllm:num_requests_running gauge") == 1
    assert 'vllm:num_requests_running{model="a",model_name="x"} 2.0' in text
    assert 'vllm:num_requests_running{model="b",model_name="x"} 2.0' in text
    assert "# TYPE vllm:prompt_tokens_total counter" in text
    assert 'vllm:prompt_tokens_total{model="b",model_name="x"} 7.0' in text
    assert 'gpumux_backend_scrape_success{model="c"} 0.0' in text
    assert 'gpumux_backend_scrape_success{model="a"} 1.0' in text
    assert 'gpumux_backend_scrape_success{model="d"} 0.0' in render({"d": "{garbage"}).decode()


async def test_event_hub_replays_numbers_and_drops_a_slow_subscriber() -> None:
    """Events get increasing ids; history is bounded; a subscriber too far behind is ended."""
    hub = EventHub(history=3, queue_limit=2)
    for i in range(5):
        hub.publish({"event": "x", "i": i})
    assert [seq for seq, _ in hub.recent()] == [3, 4, 5]
    assert [seq for seq, _ in hub.recent(after=4)] == [5]
    queue: asyncio.Queue[Any] = asyncio.Queue()
    hub._queues.add(queue)
    for i in range(3):
        hub.publish({"event": "y", "i": i})
    assert hub.subscribers == 0
    assert queue.qsize() == 3
    assert [queue.get_nowait() for _ in range(3)][-1] is None  # the end marker
    hub.close()


def test_cli_text_for_status_and_switch() -> None:
    status = {
        "models": {
            "a": {
                "state": "ready",
                "pinned": True,
                "queue_depth": 1,
                "inflight": 2,
                "restarts": 0,
                "last_switch": {
                    "strategy": "offload+keep_running",
                    "outcome": "ok",
                    "duration_s": 1.5,
                },
            },
            "b": {"state": "sleeping", "queue_depth": 0, "inflight": 0, "restarts": 3},
        },
        "mode": "manual",
        "pinned": "a",
        "switches_in_progress": [],
    }
    text = format_status(status)
    assert text.splitlines()[1].split()[:5] == ["a", "ready", "(pinned)", "1", "2"]
    assert "offload+keep_running ok 1.50s" in text
    assert "mode: manual (pinned: a)" in text
    reply = {
        "detail": "`b` is ready",
        "switch_id": 4,
        "outcome": "ok",
        "duration_s": 2.25,
        "victims": ["a"],
        "phases": {"sleep": 0.5, "wake": 1.75},
    }
    text = format_switch(reply)
    assert "switch 4: ok in 2.250s (evicted: a)" in text
    assert "wake" in text


def test_cli_target_from_flags_config_and_environment(tmp_path: Any) -> None:
    path = tmp_path / "c.json"
    path.write_text(config(admin_port=4444, admin_token_env="MYTOK").model_dump_json())
    target = resolve_target(None, str(path), {"MYTOK": "t"})
    assert (target.url, target.token) == ("http://127.0.0.1:4444", "t")
    target = resolve_target("http://h:1/", None, {"GPUMUX_ADMIN_TOKEN": "g"})
    assert (target.url, target.token) == ("http://h:1", "g")
    assert resolve_target(None, None, {}).url == "http://127.0.0.1:3001"


def test_proxy_url_uses_loopback_for_wildcard_binds() -> None:
    assert proxy_url("0.0.0.0", 3000) == "http://127.0.0.1:3000"
    assert proxy_url("::", 3000) == "http://127.0.0.1:3000"
    assert proxy_url("::1", 3000) == "http://[::1]:3000"
    assert proxy_url("10.0.0.5", 3000) == "http://10.0.0.5:3000"


def test_notify_socket_address_forms() -> None:
    """`@name` is the abstract namespace (a leading NUL); a path stays a path."""
    assert Notifier("@sd")._address == b"\0sd"
    assert Notifier("/run/systemd/notify")._address == "/run/systemd/notify"
    assert (
        Notifier.from_env(
            {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000"}
        ).watchdog_interval_secs
        == 15.0
    )
