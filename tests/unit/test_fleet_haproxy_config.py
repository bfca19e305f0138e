"""The fleet file, its cross-checks with node configs, and the generated haproxy.cfg text.

(`haproxy -c` on generated files runs in the fleet tier, which has HAProxy installed.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gpumux.cli.main import main
from gpumux.core.config import Config
from gpumux.fleet.haproxy import render_haproxy
from gpumux.fleet.plan import HEADER_ROOM_BYTES, plan_fleet
from gpumux.fleet.spec import FleetProblems, fleet_errors, parse_fleet

pytestmark = pytest.mark.unit


def node_config(index: int, models: dict[str, str], **top: Any) -> Config:
    raw: dict[str, Any] = {
        "models": {
            alias: {"model_path": path, "port": 9000 + 10 * index + i}
            for i, (alias, path) in enumerate(models.items())
        },
        "port": 3000,
        "agent_port": 3010,
        "agent_host": f"10.0.0.{index}",  # the address HAProxy reaches the node at
        **top,
    }
    return Config.model_validate(raw)


def fleet_file(*names: str, **extra: Any) -> dict[str, Any]:
    nodes = [
        {"name": n, "address": f"10.0.0.{i + 1}", "config": f"{n}.json"}
        for i, n in enumerate(names)
    ]
    return {"port": 8080, "nodes": nodes, **extra}


def three_nodes(**extra: Any) -> tuple[Any, dict[str, Config]]:
    fleet = parse_fleet(fleet_file("n1", "n2", "n3", **extra))
    configs = {
        "n1": node_config(1, {"a": "m/a", "b": "m/b"}),
        "n2": node_config(2, {"a": "m/a"}, max_request_body_bytes=8 * 1024 * 1024),
        "n3": node_config(3, {"a": "m/a", "only3": "m/c"}),
    }
    return fleet, configs


def render(**extra: Any) -> str:
    fleet, configs = three_nodes(**extra)
    assert fleet_errors(fleet, configs) == []
    return render_haproxy(plan_fleet(fleet, configs))


def test_every_directive_has_a_comment_above_it_or_shares_the_one_before() -> None:
    lines = render().splitlines()
    directives = [
        i for i, line in enumerate(lines) if line.startswith("    ") and "#" not in line[:6]
    ]
    assert directives
    for i in directives:
        above = lines[i - 1].strip()
        assert above.startswith("#") or i - 1 in directives, lines[i]
    # A shared comment covers a run of like directives only (never a whole section).
    runs, run = [], 0
    for i in directives:
        run = run + 1 if i - 1 in directives else 1
        runs.append(run)
    assert max(runs) <= 9


def test_body_buffering_is_sized_from_the_largest_body_limit() -> None:
    text = render()
    assert f"tune.bufsize {32 * 1024 * 1024 + HEADER_ROOM_BYTES}" in text  # n1's default
    assert "option http-buffer-request" in text
    assert "req.body,json_query('$.model')" in text


def servers_of(text: str, backend: str) -> list[tuple[str, bool, str, str]]:
    """(entry, backup, tracked node, tier asked) for each server of one backend."""
    section = text.split(f"backend {backend}\n")[1].split("\n\n")[0]
    found = re.findall(
        r"\n    server (\S+) \S+( backup)? track nodes/(\S+) .*agent-send \"\S+ (\w+)\\n\"",
        section,
    )
    return [(name, bool(backup), node, tier) for name, backup, node, tier in found]


def test_each_model_backend_has_four_nested_tiers_from_its_home_node() -> None:
    text = render()
    # Model a is the first model: home n1. Awake entries are active, the rest backups.
    assert servers_of(text, "model_a") == [
        ("n1", False, "n1", "awake"),
        ("n2", False, "n2", "awake"),
        ("n3", False, "n3", "awake"),
        ("n1.asleep", True, "n1", "asleep"),
        ("n2.asleep", True, "n2", "asleep"),
        ("n3.asleep", True, "n3", "asleep"),
        ("n1.cold", True, "n1", "cold"),
        ("n2.cold", True, "n2", "cold"),
        ("n3.cold", True, "n3", "cold"),
        ("n1.queue", True, "n1", "queue"),
        ("n2.queue", True, "n2", "queue"),
        ("n3.queue", True, "n3", "queue"),
    ]
    # Model b, the second, is only on n1: its home is n1 whatever its index.
    assert [s[0] for s in servers_of(text, "model_b")] == ["n1", "n1.asleep", "n1.cold", "n1.queue"]
    # only3 (the third) is on n3 alone.
    assert [s[0] for s in servers_of(text, "model_only3")][:2] == ["n3", "n3.asleep"]
    backend = text.split("backend model_a\n")[1].split("\n\n")[0]
    assert "agent-addr 10.0.0.2 agent-port 3010" in backend
    assert "default-server weight 100 disabled agent-check" in backend
    assert "option allbackups" not in text  # only the first usable backup takes a burst


def test_cold_models_get_different_home_nodes() -> None:
    fleet = parse_fleet(fleet_file("n1", "n2", "n3"))
    configs = {
        n: node_config(i + 1, {"x": "m", "y": "m", "z": "m"})
        for i, n in enumerate(("n1", "n2", "n3"))
    }
    text = render_haproxy(plan_fleet(fleet, configs))
    homes = [
        next(name for name, _, _, tier in servers_of(text, f"model_{m}") if tier == "cold")
        for m in "xyz"
    ]
    assert homes == ["n1.cold", "n2.cold", "n3.cold"]
    assert "#   y: n2, n3, n1" in text


def test_unknown_and_unroutable_models_get_openai_shaped_answers() -> None:
    text = render()
    assert "acl known_model var(txn.model) -m str a b only3" in text
    not_found = re.search(
        r"http-request return status 404 .* lf-string '(.*)' if names_model !known_model", text
    )
    assert not_found is not None
    body = json.loads(not_found[1].replace("%[var(txn.model),bytes(0,200),json(utf8s)]", "x"))
    assert body["error"]["code"] == "model_not_found"
    unroutable = re.search(
        r"hdr Retry-After 5 string '(.*)' if model_a \{ nbsrv\(model_a\) eq 0 \}", text
    )
    assert unroutable is not None
    assert json.loads(unroutable[1])["error"]["code"] == "model_unavailable"
    listed = re.search(
        r"http-response return status 200 content-type application/json string '(.*)' if", text
    )
    assert listed is not None
    assert [m["id"] for m in json.loads(listed[1])["data"]] == ["a", "b", "only3"]


def test_retries_redispatch_and_health_checks() -> None:
    text = render(check_interval_ms=250)
    for line in (
        "retry-on conn-failure empty-response 503",
        "option redispatch 1",
        "option httpchk GET /health",
        "default-server inter 250ms fastinter 250ms fall 2 rise 2",
        "agent-inter 250ms",
    ):
        assert line in text


@pytest.mark.parametrize(("interval_ms", "retries"), [(200, 3), (1000, 4), (5000, 8)])
def test_retries_outlast_the_detection_of_a_dead_node(interval_ms: int, retries: int) -> None:
    """Down after one interval plus a fast check; the attempts, a second apart, span it."""
    text = render(check_interval_ms=interval_ms)
    assert f"\n    retries {retries}\n" in text
    detection = (interval_ms + min(interval_ms, 250)) / 1000
    assert retries - 1 >= detection + 1  # one turn-around to spare


def test_the_same_plan_always_renders_the_same_bytes() -> None:
    assert render() == render()
    assert "stats socket unix@front.sock" in render(stats_socket="front.sock")
    assert "stats socket /run/haproxy/gpumux.sock" in render(
        stats_socket="/run/haproxy/gpumux.sock"
    )
    assert "server-state-file" not in render()
    stateful = render(server_state_file="/var/lib/haproxy/gpumux.state")
    assert "    server-state-file /var/lib/haproxy/gpumux.state\n" in stateful
    assert "    load-server-state-from-file global\n" in stateful


def test_fleet_file_schema_errors_are_listed() -> None:
    with pytest.raises(FleetProblems) as problems:
        parse_fleet({"port": "x", "nodes": [], "extra": 1})
    assert {e.split(":")[0] for e in problems.value.errors} == {"port", "nodes", "extra"}


def test_cross_checks_between_fleet_and_node_configs() -> None:
    fleet = parse_fleet(
        {
            "nodes": [
                {"name": "n.1", "address": "10.0.0.1", "config": "x"},
                {"name": "n2", "address": "10.0.0.1", "config": "y"},
            ]
        }
    )
    configs = {
        "n.1": node_config(1, {"a'b": "m"}, agent_port=None),
        "n2": node_config(2, {"a": "m"}, host="127.0.0.1"),
    }
    errors = fleet_errors(fleet, configs)
    assert any("n.1: a node name" in e for e in errors)
    assert any("no agent_port" in e for e in errors)
    assert any('model name "a\'b"' in e for e in errors)
    assert any("10.0.0.1:3000 is also node n.1" in e for e in errors)
    assert any("host 127.0.0.1 is loopback" in e for e in errors)


def test_a_model_configured_differently_on_two_nodes_is_a_warning() -> None:
    fleet = parse_fleet(fleet_file("n1", "n2"))
    configs = {"n1": node_config(1, {"a": "m/a"}), "n2": node_config(2, {"a": "m/other"})}
    assert plan_fleet(fleet, configs).warnings == (
        "model a: model_path 'm/a' on n1 but 'm/other' on n2; HAProxy treats them as one model",
    )


def write_fleet_files(tmp: Path, configs: dict[str, dict[str, Any]]) -> Path:
    for name, config in configs.items():
        (tmp / f"{name}.json").write_text(json.dumps(config))
    path = tmp / "fleet.json"
    path.write_text(json.dumps(fleet_file(*configs)))
    return path


def test_cli_writes_the_file_or_lists_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = {
        "models": {"a": {"model_path": "m", "port": 9001}},
        "agent_port": 3010,
        "agent_host": "0.0.0.0",
    }
    path = write_fleet_files(tmp_path, {"n1": good, "n2": good})
    out = tmp_path / "haproxy.cfg"
    assert main(["fleet", "haproxy-config", str(path), "--out", str(out)]) == 0
    assert "backend model_a" in out.read_text()
    assert main(["fleet", "haproxy-config", str(path)]) == 0
    assert capsys.readouterr().out == out.read_text()

    broken = {"models": {"a": {"model_path": "m", "port": 9001}}, "agent_porrt": 1}
    path = write_fleet_files(tmp_path, {"n1": broken, "n2": {**good, "agent_port": None}})
    assert main(["fleet", "haproxy-config", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nodes.n1: agent_porrt: unknown key" in err
    (tmp_path / "fleet.json").write_text("{nope")
    assert main(["fleet", "haproxy-config", str(path)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
