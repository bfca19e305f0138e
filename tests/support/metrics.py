"""The daemon's Prometheus endpoints as tests read them: one series' value, a scrape, a lint.

Owns: `scrape` (the text of `/metrics` or `/metrics/backends` on the daemon's metrics
port), `metric_value` (one series by name and labels, 0 when absent) and
`promtool_lint` (Debian's `promtool check metrics`; missing, it fails the test).
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

from tests.support.daemon import RunningDaemon


def scrape(daemon: RunningDaemon, path: str = "/metrics") -> str:
    url = f"http://127.0.0.1:{daemon.config['metrics_port']}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def metric_value(daemon: RunningDaemon, name: str, **labels: str) -> float:
    """The value of one gpumux metric series (0 when absent)."""
    for line in scrape(daemon).splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def promtool_lint(text: str) -> tuple[int, str]:
    """(exit status, output) of `promtool check metrics` on a scrape."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (scripts/test installs Debian's prometheus)"
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr
