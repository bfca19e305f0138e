"""A load generator in C, so the proxy is measured and not the client: Debian's `wrk`.

Owns: the Lua script that makes `wrk` POST one JSON body on every kept-alive connection
and print its result as one JSON line, running one round (`wrk -t1 -cN -dS`) on chosen
CPUs with the CPU time `wrk` itself spent, and merging rounds' latency distributions.
Does not: start what it measures, read anyone else's CPU, or judge the numbers.

Closed loop like the Python generator in `proxy_overhead.py`: each connection sends its
next request when the whole reply (for a stream, the last SSE byte) has arrived. One
thread: at the request rates a 2-CPU machine reaches, one `wrk` thread stays far below a
CPU. `wrk` counts connect/read/write/timeout errors and replies with a status > 399; a
stream's content is not checked (compare.py checks one reply per mode before timing).
Latency is whole-reply only: `wrk` has no time to first byte. A round's distribution
comes back as 999 quantiles (0.1 % steps), each weighing requests/999, so rounds merge
into one distribution without keeping every request.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

WRK = shutil.which("wrk") or "/usr/bin/wrk"
QUANTILES = 999
TIMEOUT_SECS = 30

_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]

done = function(summary, latency, requests)
  local e = summary.errors
  local q = {{}}
  for i = 1, {quantiles} do
    q[i] = latency:percentile(i * 100.0 / ({quantiles} + 1))
  end
  io.write(string.format(
    '{{"requests": %d, "duration_us": %d, "socket_errors": %d, "status_errors": %d, ' ..
    '"quantiles_us": [%s]}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    e.status, table.concat(q, ",")))
end
"""


def available() -> bool:
    return os.access(WRK, os.X_OK)


def write_script(path: Path, body: bytes) -> Path:
    """The Lua script that POSTs `body` (a JSON document without `]==]` in it)."""
    text = body.decode()
    if "]==]" in text:
        raise ValueError("body would end the Lua long string")
    path.write_text(_LUA.format(body=text, quantiles=QUANTILES))
    return path


@dataclass(frozen=True)
class Round:
    """One `wrk` run: completed requests, errors, latency quantiles (seconds), CPU used."""

    requests: int
    elapsed_secs: float
    errors: int
    quantiles: tuple[float, ...]
    cpu_secs: float


def run_round(
    url: str, script: Path, connections: int, secs: int, cpus: frozenset[int] | None = None
) -> Round:
    """`connections` closed-loop clients on `url` for `secs` seconds (on `cpus` if given)."""
    argv = [
        WRK,
        "-t1",
        f"-c{connections}",
        f"-d{secs}s",
        f"--timeout={TIMEOUT_SECS}s",
        "-s",
        str(script),
        url,
    ]

    def pin() -> None:  # runs in the child, before exec
        if cpus:
            os.sched_setaffinity(0, cpus)

    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=pin
    )
    assert process.stdout is not None
    output = process.stdout.read()  # until wrk exits and closes it
    process.stdout.close()
    # wait4, not wait: the CPU this one child used, from its rusage.
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {output.decode()[-500:]}")
    cpu_secs = usage.ru_utime + usage.ru_stime
    lines = output.decode().strip().splitlines()
    result = json.loads(lines[-1])
    return Round(
        requests=int(result["requests"]),
        elapsed_secs=result["duration_us"] / 1e6,
        errors=int(result["socket_errors"]) + int(result["status_errors"]),
        quantiles=tuple(v / 1e6 for v in result["quantiles_us"]),
        cpu_secs=cpu_secs,
    )


def merged_percentile(rounds: Iterable[Round], q: float) -> float:
    """The `q`-th percentile (0..100) of the rounds' requests taken together, each round's
    quantiles weighing its request count (exact within the 0.1 % quantile steps)."""
    weighted: list[tuple[float, float]] = []
    for r in rounds:
        if r.requests and r.quantiles:
            weight = r.requests / len(r.quantiles)
            weighted += [(value, weight) for value in r.quantiles]
    if not weighted:
        raise ValueError("percentile of no requests")
    weighted.sort()
    total = sum(w for _, w in weighted)
    target = total * q / 100
    seen = 0.0
    for value, weight in weighted:
        seen += weight
        if seen >= target:
            return value
    return weighted[-1][0]
