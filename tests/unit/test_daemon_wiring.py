"""The daemon's wiring parts that need no process: options, ledger, lifecycle, exits.

`build_components` itself is exercised end to end by the integration tests (a real
`gpumux serve`); here only what it decides before anything is opened.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gpumux.core.config import Config
from gpumux.core.config_rules import ConfigProblems
from gpumux.core.states import DaemonState, IllegalTransition
from gpumux.daemon.adapters import ProcessExits
from gpumux.daemon.components import Ports, ServeOptions, build_components
from gpumux.daemon.lifecycle import DaemonLifecycle
from gpumux.daemon.state_dir import prepare_fake_ledger, resolve_state_dir

pytestmark = pytest.mark.unit


def config(**top: Any) -> Config:
    return Config.model_validate({"models": {"a": {"model_path": "m", "port": 8100}}, **top})


def test_ports_take_command_line_overrides_over_the_config() -> None:
    """--port/--metrics-port/--admin-port win; without them the config's values hold."""
    base = config(port=3000, metrics_port=9100, admin_port=3001)
    assert Ports.of(base, ServeOptions()) == Ports(proxy=3000, metrics=9100, admin=3001)
    overridden = ServeOptions(port=4000, metrics_port=0, admin_port=4001)
    assert Ports.of(base, overridden) == Ports(proxy=4000, metrics=0, admin=4001)


def test_state_dir_is_the_config_then_systemd_then_xdg(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`state_dir` wins; else systemd's first StateDirectory; else $XDG_STATE_HOME/gpumux."""
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/sd:{tmp_path}/other")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert resolve_state_dir(config(state_dir=str(tmp_path / "own"))) == tmp_path / "own"
    assert resolve_state_dir(config()) == tmp_path / "sd"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert resolve_state_dir(config()) == tmp_path / "xdg" / "gpumux"


def test_the_daemon_resets_the_fake_ledger_and_a_prebake_keeps_it(tmp_path: Path) -> None:
    """serve starts the ledger afresh; --checkpoint never resets a running daemon's."""
    fake = config(gpu={"probe": "fake", "fake_capacity_gib": [1]})
    path = prepare_fake_ledger(fake, tmp_path, keep_existing=False)
    assert path == tmp_path / "fake-gpu-ledger.json"
    booked = {"capacity_bytes": {"0": 1}, "allocations": {"42": {}}}
    path.write_text(json.dumps(booked))
    assert prepare_fake_ledger(fake, tmp_path, keep_existing=True) == path
    assert json.loads(path.read_text()) == booked
    prepare_fake_ledger(fake, tmp_path, keep_existing=False)
    assert json.loads(path.read_text())["allocations"] == {}
    assert prepare_fake_ledger(config(), tmp_path, keep_existing=False) is None


def test_lifecycle_moves_only_along_its_table() -> None:
    """The proxy sees "shutting down" until SERVING and again from DRAINING."""
    lifecycle = DaemonLifecycle()
    assert lifecycle.shutting_down()
    lifecycle.transition(DaemonState.SERVING)
    assert not lifecycle.shutting_down()
    assert lifecycle.state_name() == "serving"
    with pytest.raises(IllegalTransition):
        lifecycle.transition(DaemonState.STOPPED)
    lifecycle.transition(DaemonState.DRAINING)
    assert lifecycle.shutting_down()


def test_process_exits_reach_the_one_connected_listener() -> None:
    """Exits go to the listener; one before it is connected is logged, not lost silently."""
    exits = ProcessExits()
    with capture_logs() as logs:
        exits("a", 7, 1)
    assert [entry["event"] for entry in logs] == ["backend_exit_unheard"]
    heard: list[tuple[str, int, int]] = []
    exits.connect(lambda model, pid, code: heard.append((model, pid, code)))
    exits("a", 8, -9)
    assert heard == [("a", 8, -9)]
    with pytest.raises(RuntimeError):
        exits.connect(lambda _model, _pid, _code: None)


async def test_a_named_but_unset_admin_token_fails_before_anything_is_opened(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ConfigProblems (exit 2) comes before the state directory, reaper or probe exist."""
    monkeypatch.delenv("GPUMUX_TEST_UNSET_TOKEN", raising=False)
    state = tmp_path / "state"
    named = config(admin_port=3001, admin_token_env="GPUMUX_TEST_UNSET_TOKEN", state_dir=str(state))
    with pytest.raises(ConfigProblems, match="GPUMUX_TEST_UNSET_TOKEN"):
        await build_components(named, ServeOptions(), DaemonLifecycle())
    assert not state.exists()
