"""`scripts/gpu-check`: the phases in order, under one time budget, results after each.

Owns: the command line, the order (prerequisites → pinned reference → tests/gpu per mode
→ the daemon with one model per strategy → verdicts), the environment children get
(PYTHONPATH: src, the repository, the unpacked wheels), the work folder (weights files
and logs; deleted unless --keep-work) and the exit code: 0 all verdicts pass ("not run"
rows do not fail it), 1 some fail, 2 prerequisites are missing.
Does not: implement any phase.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.gpu_check import prereqs

REPO = Path(__file__).resolve().parents[3]
GIB = 1 << 30


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/gpu-check", description=__doc__)
    p.add_argument("--wheels", type=Path, help="wheels for Python packages this machine lacks")
    p.add_argument("--out", type=Path, default=Path("gpu-check-results"))
    p.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    p.add_argument("--keep-work", action="store_true")
    p.add_argument("--fake-gpu", action="store_true",
                   help="dry run without a GPU: ledger mocks and the fake probe")  # fmt: skip
    p.add_argument("--utilization", type=float, default=0.26, help="per model (3 fit, 4 not)")
    p.add_argument("--weights-gib", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3, help="requests per model")
    p.add_argument("--skip-tests", action="store_true", help="leave out tests/gpu")
    p.add_argument("--budget-secs", type=float, default=300.0)
    p.add_argument("--criu", choices=("auto", "off"), default="auto")
    return p.parse_args(argv)


def environment(pylib: Path) -> dict[str, str]:
    parts = [str(REPO / "src"), str(REPO), str(pylib), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in parts if p)
    os.environ["PYTHONUNBUFFERED"] = "1"
    for path in (str(REPO), str(REPO / "src")):
        if path not in sys.path:
            sys.path.insert(0, path)
    return dict(os.environ)


def say(text: str) -> None:
    print(f"gpu-check: {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    work = (args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"mode": "fake-gpu" if args.fake_gpu else "gpu", "checks": []}
    try:
        return _run(args, work, started, results)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path, started: float, results: dict[str, Any]) -> int:
    out = args.out.resolve()
    setup = prereqs.install(args.wheels, work / "pylib")
    env = environment(work / "pylib")
    setup.smoke_error = prereqs.smoke(env) if not setup.still_lacking else None
    results["prereqs"] = vars(setup)
    results["tools"] = prereqs.tools()
    results["machine"] = {"python": platform.python_version(), **setup.gpu_stack}
    say(f"lacking: {setup.lacking or 'nothing'}; from wheels: {setup.installed or 'nothing'}")
    torch_missing = not args.fake_gpu and setup.gpu_stack.get("torch") == "missing"
    if not setup.ok or torch_missing:
        missing = {**setup.still_lacking, **({"torch": "missing"} if torch_missing else {})}
        say(f"MISSING (pass --wheels DIR, see scripts/gpu-wheels): {missing}")
        if setup.smoke_error:
            say(f"import failed: {setup.smoke_error}")
        results["ok"] = False
        _write(out, results, started)
        return 2
    from tests.support.gpu_check import phases

    return phases.run_all(args, work, out, env, started, results, _write)


def _write(out: Path, results: dict[str, Any], started: float) -> None:
    from tests.support.gpu_check import report

    results["duration_secs"] = round(time.monotonic() - started, 1)
    report.write(out, results)
