"""The deployment files lint clean with the real tools: systemd-analyze and promtool.

A missing tool fails these tests (scripts/test installs `prometheus` and systemd ships
`systemd-analyze`); CI never skips them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "gpumux.service"
PROMETHEUS = ROOT / "deploy" / "prometheus"


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (scripts/test installs it)"
    return path


def unit_settings() -> dict[str, str]:
    settings = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def test_systemd_unit_verifies_without_a_word_on_stderr(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit (ExecStart pointed at this venv's gpumux)."""
    gpumux = Path(sys.executable).parent / "gpumux"
    assert gpumux.exists()
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/gpumux " in text
    copy = tmp_path / "gpumux.service"
    copy.write_text(text.replace("/usr/local/bin/gpumux", str(gpumux)))
    result = subprocess.run(
        [tool("systemd-analyze"), "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stderr == "", result.stderr
    assert result.returncode == 0


def test_systemd_unit_has_the_contract_settings() -> None:
    """notify + watchdog, mixed kill, exit 2 not restarted, OOM protection, state dir."""
    settings = unit_settings()
    assert settings["Type"] == "notify"
    assert int(settings["WatchdogSec"]) > 0
    assert settings["KillMode"] == "mixed"
    assert int(settings["TimeoutStopSec"]) > 0
    assert settings["RestartPreventExitStatus"] == "2"
    assert int(settings["OOMScoreAdjust"]) < 0
    assert settings["StateDirectory"] == "gpumux"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"


def test_alert_rules_check_and_their_unit_tests_pass() -> None:
    """promtool check rules, and promtool test rules on the crash-loop/FAILED cases."""
    for argv in (
        [tool("promtool"), "check", "rules", "alerts.yml"],
        [tool("promtool"), "test", "rules", "alerts_test.yml"],
        [tool("promtool"), "check", "config", "prometheus.yml"],
    ):
        result = subprocess.run(
            argv, cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_cover_the_operator_cases() -> None:
    """Crash loop, failed model, queue rejections, slow switches and failed restores each
    have an alert."""
    text = (PROMETHEUS / "alerts.yml").read_text()
    for name in (
        "GpumuxBackendCrashLoop",
        "GpumuxModelFailed",
        "GpumuxQueueRejections",
        "GpumuxSlowSwitches",
        "GpumuxCheckpointRestoreFailures",
    ):
        assert f"alert: {name}" in text
