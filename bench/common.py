"""What every benchmark shares: percentiles, timed HTTP requests, environment facts, reports.

Owns: the percentile math (linear interpolation, numpy's default), summaries of latency
samples in milliseconds, one timed POST (time to first body byte, total time, completion
tokens read from the `usage` the backend reports), the facts a reader needs to judge a
number (CPU count, load, Python, git commit), and writing `bench/results/<name>.json`
and `.md` side by side.
Does not: start daemons or backends (the scripts reuse `tests.support.daemon`) or decide
what a run measures.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"

JSON_HEADERS = {"Content-Type": "application/json"}
#: Bytes kept from the end of a response body: enough to hold the `usage` object.
_TAIL_BYTES = 2048
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


# ---- percentiles and summaries ---------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """The `q`-th percentile (0..100) by linear interpolation between closest ranks.

    Matches numpy's default (`method="linear"`). Raises ValueError on no values or a
    `q` outside [0, 100]; NaN values are rejected rather than silently sorted.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {q!r}")
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    if any(math.isnan(v) for v in ordered):
        raise ValueError("percentile of NaN values")
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


@dataclass(frozen=True)
class Summary:
    """Percentiles of one series, in the unit the samples were given in."""

    n: int
    p50: float
    p99: float
    mean: float
    min: float
    max: float

    def scaled(self, factor: float) -> Summary:
        """The same summary in another unit (e.g. `1000` for seconds to milliseconds)."""
        return Summary(
            self.n,
            self.p50 * factor,
            self.p99 * factor,
            self.mean * factor,
            self.min * factor,
            self.max * factor,
        )

    def as_dict(self, digits: int = 3) -> dict[str, float | int]:
        return {
            "n": self.n,
            "p50": round(self.p50, digits),
            "p99": round(self.p99, digits),
            "mean": round(self.mean, digits),
            "min": round(self.min, digits),
            "max": round(self.max, digits),
        }


def summarize(values: Sequence[float]) -> Summary:
    """p50/p99/mean/min/max of `values`; ValueError when there are none."""
    if not values:
        raise ValueError("summary of no values")
    return Summary(
        n=len(values),
        p50=percentile(values, 50),
        p99=percentile(values, 99),
        mean=sum(values) / len(values),
        min=min(values),
        max=max(values),
    )


def summarize_ms(seconds: Sequence[float]) -> Summary:
    """`summarize` of durations given in seconds, reported in milliseconds."""
    return summarize(seconds).scaled(1000.0)


# ---- one timed request ------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One request as the client saw it. Times are seconds from just before the send."""

    ok: bool
    status: int | None
    ttfb: float  # first body byte (for a stream: the first SSE frame)
    total: float  # last body byte
    completion_tokens: int
    error: str | None = None


def completion_tokens(tail: bytes) -> int:
    """`usage.completion_tokens` found in the last bytes of a body (0 when absent)."""
    found = _COMPLETION_TOKENS.findall(tail)
    return int(found[-1]) if found else 0


async def timed_post(session: aiohttp.ClientSession, url: str, body: bytes) -> Sample:
    """POST `body` and read the whole reply, timing the first and the last body byte.

    The body is read as it arrives (never parsed), so a streaming and a non-streaming
    reply cost the client the same per byte. Errors become a failed `Sample`, not raises.
    """
    started = time.perf_counter()
    status: int | None = None
    try:
        async with session.post(url, data=body, headers=JSON_HEADERS) as response:
            status = response.status
            tail = await response.content.readany()
            ttfb = time.perf_counter() - started
            while chunk := await response.content.readany():
                tail = (tail + chunk)[-_TAIL_BYTES:]
            total = time.perf_counter() - started
    except (aiohttp.ClientError, TimeoutError) as exc:
        elapsed = time.perf_counter() - started
        return Sample(False, status, elapsed, elapsed, 0, type(exc).__name__)
    if status != 200:
        return Sample(False, status, ttfb, total, 0, f"HTTP {status}")
    return Sample(True, status, ttfb, total, completion_tokens(tail))


async def get_json_async(session: aiohttp.ClientSession, url: str) -> Any:
    """GET `url` and decode its JSON body; raises on a non-2xx reply."""
    async with session.get(url) as response:
        response.raise_for_status()
        return await response.json()


def chat_body(model: str, *, max_tokens: int, stream: bool, prompt: str = "hello") -> bytes:
    """A chat completion request, encoded once; streams ask for `usage` in the last frame."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def mock_args(**knobs: float | int | str) -> list[str]:
    """`mock_vllm` flags for knobs: `mock_args(ttft_ms=0)` → `["--mock-ttft-ms", "0"]`."""
    argv: list[str] = []
    for name, value in knobs.items():
        argv += ["--mock-" + name.replace("_", "-"), str(value)]
    return argv


# ---- environment facts -------------------------------------------------------------------


def git_commit(root: Path = REPO_ROOT) -> str:
    """The checked-out commit, with `-dirty` when the working tree differs; "unknown" if no git."""
    try:
        commit = _git(root, "rev-parse", "--short=12", "HEAD")
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
    )
    return done.stdout.strip()


def source_digest(root: Path = REPO_ROOT, parts: Sequence[str] = ("src", "mock_vllm")) -> str:
    """A short sha256 of every `.py` file under `parts`: which code ran, even when dirty."""
    digest = hashlib.sha256()
    for part in parts:
        for path in sorted((root / part).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def environment() -> dict[str, Any]:
    """Facts that change what a number means: CPUs, load, interpreter, library, commit."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "load_average_at_start": load,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "aiohttp": aiohttp.__version__,
        "git_commit": git_commit(),
        "source_digest": source_digest(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ---- reports -----------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub Markdown table; cells are `str()`ed and `|` is escaped."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, table has {len(headers)} columns")
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for a table: fixed digits, "–" for missing or NaN."""
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.{digits}f}"


def ratio(numerator: float, denominator: float) -> float:
    """`numerator / denominator`, NaN when the denominator is zero."""
    return numerator / denominator if denominator else math.nan


def environment_lines(env: Mapping[str, Any]) -> list[str]:
    """The environment as Markdown bullet lines, for the head of a report."""
    return [
        f"- CPUs: {env['cpus_usable']} usable of {env['cpu_count']}; "
        f"load average at start {env['load_average_at_start']}",
        f"- Python {env['python']} ({env['implementation']}), aiohttp {env['aiohttp']}, "
        f"{env['platform']}",
        f"- git commit {env['git_commit']} (sources sha256 {env['source_digest']}), "
        f"started {env['started_at']}",
    ]


def write_results(
    name: str, payload: Mapping[str, Any], markdown: str, directory: Path = RESULTS_DIR
) -> tuple[Path, Path]:
    """Write `<name>.json` and `<name>.md` under `directory`; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{name}.json"
    md_path = directory / f"{name}.md"
    json_path.write_text(json.dumps(_clean(payload), indent=2, allow_nan=False) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def publish(name: str, payload: Mapping[str, Any], markdown: str) -> tuple[Path, Path]:
    """`write_results`, then print the Markdown report and where both files went."""
    json_path, md_path = write_results(name, payload, markdown)
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return json_path, md_path


def _clean(value: object) -> object:
    """`value` with NaN and infinities turned into null (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
