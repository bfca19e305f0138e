"""`agent_port` / `agent_host`: off by default, validated, and counted among the ports."""

from __future__ import annotations

from typing import Any

import pytest

from gpumux.core.config_rules import ConfigProblems, parse_config

pytestmark = pytest.mark.unit


def raw(**top: Any) -> dict[str, Any]:
    return {"models": {"a": {"model_path": "m", "port": 8001}}, **top}


def errors_of(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigProblems) as problems:
        parse_config(document)
    return problems.value.errors


def test_off_by_default_and_loopback_when_on() -> None:
    config, warnings = parse_config(raw())
    assert (config.agent_port, config.agent_host) == (None, "127.0.0.1")
    config, warnings = parse_config(raw(agent_port=3010))
    assert (config.agent_port, warnings) == (3010, [])


@pytest.mark.parametrize("value", [0, 70000, "3010", True, 3.5])
def test_agent_port_must_be_a_port(value: object) -> None:
    assert any(e.startswith("agent_port:") for e in errors_of(raw(agent_port=value)))


@pytest.mark.parametrize(
    ("field", "port"),
    [("port", 3000), ("metrics_port", 9090), ("admin_port", 3001), ("models.a.port", 8001)],
)
def test_agent_port_collisions_are_errors(field: str, port: int) -> None:
    top: dict[str, Any] = {"admin_port": 3001, "agent_port": port}
    errors = errors_of(raw(**top))
    assert any(
        f"port {port} is already used by" in e and field in e and "agent_port" in e for e in errors
    ), errors


def test_a_collision_is_reported_even_when_the_schema_fails() -> None:
    errors = errors_of(raw(agent_port=3000, policy={"policy_type": "nope"}))
    assert "agent_port: port 3000 is already used by port" in errors


def test_a_wildcard_agent_host_is_a_warning() -> None:
    _, warnings = parse_config(raw(agent_port=3010, agent_host="0.0.0.0"))
    assert len(warnings) == 1
    assert warnings[0].startswith("agent_host: 0.0.0.0 answers anyone")
    _, warnings = parse_config(raw(agent_port=3010, agent_host="10.0.0.5"))
    assert warnings == []
