"""`tests/gpu` (pytest -m gpu) in both cuda-checkpoint modes, as rows for the report.

Owns: running pytest once per mode — the driver API (`GPUMUX_GPU_MODES=driver`, with every
mode-independent GPU test) and NVIDIA's CLI (`GPUMUX_GPU_MODES=cli`, the suspend test
only) — each under a deadline, reading its JUnit XML and the measurements the tests drop
in `GPUMUX_GPU_RESULTS_DIR`, and saying "not run" with the reason when the CLI binary is
absent instead of failing the whole check.
Does not: know what the tests assert.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

SUSPEND_TEST = "tests/gpu/test_cuda_suspend_gpu.py"


def _cases(junit: Path) -> list[dict[str, Any]]:
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error"}.get(child.tag, "skipped")
                message = (
                    (child.get("message") or "").splitlines()[0][:200]
                    if child.get("message")
                    else ""
                )
        cases.append({
            "test": f"{case.get('classname', '')}::{case.get('name', '')}",
            "outcome": outcome, "secs": round(float(case.get("time", 0)), 2), "message": message,
        })  # fmt: skip
    return cases


def run_mode(
    mode: str, env: dict[str, str], out: Path, timeout: float, repo: Path
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    junit = out / f"junit-{mode}.xml"
    paths = ["tests/gpu"] if mode == "driver" else [SUSPEND_TEST]
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", *paths, "-p", "no:cacheprovider"]
    # The ini turns every warning into an error; a deprecation printed by the GPU machine's
    # own packages (the old `pynvml` wrapper, say) is not what this tier tests.
    cmd += ["-q", "-s", f"--junitxml={junit}", "-W", "ignore::DeprecationWarning"]
    cmd += ["-W", "ignore::FutureWarning"]
    child_env = {**env, "GPUMUX_GPU_MODES": mode, "GPUMUX_GPU_RESULTS_DIR": str(out)}
    started = time.monotonic()
    row: dict[str, Any] = {"mode": mode, "status": "failed", "cases": []}
    try:
        done = subprocess.run(
            cmd, cwd=repo, env=child_env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        row["reason"] = f"pytest ran past {timeout:.0f} s"
        (out / f"pytest-{mode}.log").write_text(str(exc.stdout or "") + str(exc.stderr or ""))
        return row
    (out / f"pytest-{mode}.log").write_text(done.stdout + done.stderr)
    row["secs"] = round(time.monotonic() - started, 1)
    row["cases"] = _cases(junit) if junit.exists() else []
    row["status"] = "passed" if done.returncode == 0 and row["cases"] else "failed"
    if not row["cases"]:
        row["reason"] = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no tests"]
    result = out / f"cuda_suspend_{mode}.json"
    if result.exists():
        row["suspend"] = json.loads(result.read_text())
    return row


def not_run(mode: str, reason: str) -> dict[str, Any]:
    return {"mode": mode, "status": "not run", "reason": reason, "cases": []}
