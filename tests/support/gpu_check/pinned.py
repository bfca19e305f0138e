"""The reference every switch time is read against: host<->device copies, this run, this card.

Owns: one measurement in a child process (so its CUDA context is gone before the daemon
starts): allocating fresh pinned host memory, the same size again from torch's caching
host allocator, pinned copies both ways, and pageable copies both ways, each as bytes/s.
Does not: judge (the report puts the switches beside it).

Run: ``python -m tests.support.gpu_check.pinned GIB`` prints one JSON object.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from typing import Any

GIB = 1 << 30


def measure(gib: float) -> dict[str, float]:
    torch: Any = importlib.import_module("torch")
    n = int(gib * GIB) // 8
    size = n * 8
    dev = torch.empty(n, dtype=torch.int64, device="cuda").fill_(7)
    clock: list[float] = []

    def tick() -> float:
        torch.cuda.synchronize()
        clock.append(time.perf_counter())
        return clock[-1] - clock[-2] if len(clock) > 1 else 0.0

    out: dict[str, float] = {"bytes": size}
    tick()
    pinned = torch.empty(n, dtype=torch.int64, pin_memory=True)
    out["pin_fresh_secs"] = tick()
    pinned.copy_(dev, non_blocking=True)  # warm-up
    tick()
    pinned.copy_(dev, non_blocking=True)
    out["pinned_d2h_secs"] = tick()
    dev.copy_(pinned, non_blocking=True)
    out["pinned_h2d_secs"] = tick()
    del pinned  # back to torch's caching host allocator
    tick()
    again = torch.empty(n, dtype=torch.int64, pin_memory=True)
    out["pin_cached_secs"] = tick()
    del again
    pageable = torch.empty(n, dtype=torch.int64)
    pageable.fill_(1)  # touch the pages: first-touch faults are not copy cost
    tick()
    pageable.copy_(dev)
    out["pageable_d2h_secs"] = tick()
    dev.copy_(pageable)
    out["pageable_h2d_secs"] = tick()
    for key in [k for k in out if k.endswith("_secs")]:
        out[key.replace("_secs", "_bytes_per_s")] = size / max(out[key], 1e-9)
    return out


def run(gib: float, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Measure in a child process; {"error": ...} instead of raising."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.support.gpu_check.pinned", str(gib)],
            env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    print(json.dumps(measure(float(sys.argv[1]))))
