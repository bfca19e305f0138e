"""`scripts/gpu-check --fake-gpu`: the GPU machine's check, run end to end on the CPU.

The device run needs a GPU; everything around it (prerequisites, the generated config,
the real daemon with four mocks, one per eviction strategy, the verdicts and the report)
runs here on the fake ledger, so a change that breaks the check fails in CI, not on the
next GPU machine someone borrows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_fake_gpu_dry_run_passes_and_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/gpu-check"),
            "--fake-gpu",
            "--criu",
            "off",
            "--out",
            str(out),
            "--budget-secs",
            "200",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    markdown = (out / "gpu-check.md").read_text()
    assert markdown.startswith("# gpu-check: PASS"), markdown[:2000]
    assert report["ok"] is True
    failed = [c for c in report["checks"] if c["ok"] is False]
    assert not failed, failed
    # Every strategy of the device run is exercised here too.
    assert len(report["strategies"]) == 4, report["strategies"]
