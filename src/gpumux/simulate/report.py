"""The per-policy numbers of a run, and their JSON and Markdown forms.

Owns: the summary the CLI contract fixes (`mean_wait`, `p50_wait`, `p99_wait`,
`max_wait`, `switches`, `busy_fraction`, `over_bound`, `completed`) and how each is
counted:
- wait: queue wait, grant time minus arrival, over every request that was queued and
  then granted or failed there (a queue timeout counts with the time it waited).
  Requests refused on arrival (queue full) and clients that gave up while queued are
  left out: they never waited for a switch.
- switches: models brought up (ok or fallen back to a cold start).
- busy_fraction: per GPU, the share of the run during which some model on it was serving
  at least one request; averaged over the GPUs that host a model.
- over_bound: answered requests that waited longer than `max_wait_secs` plus the switch
  that brought their model up (drain + evict + wake, as `records.SwitchLog` times it).
- completed: requests served to their last token.
Does not: run simulations. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from gpumux.simulate.records import RunRecord

Summary = dict[str, float | int]
FIELDS = (
    "mean_wait",
    "p50_wait",
    "p99_wait",
    "max_wait",
    "switches",
    "busy_fraction",
    "over_bound",
    "completed",
)
_SLACK = 1e-6  # float noise in virtual time


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted `values` (0 for none)."""
    if not values:
        return 0.0
    return values[max(0, math.ceil(q * len(values)) - 1)]


def union_secs(spans: Iterable[tuple[float, float]]) -> float:
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def busy_fraction(record: RunRecord) -> float:
    if record.end <= 0:
        return 0.0
    gpus = sorted({g for gs in record.gpus.values() for g in gs})
    shares = [
        union_secs(s for m, gs in record.gpus.items() if g in gs for s in record.busy[m])
        / record.end
        for g in gpus
    ]
    return sum(shares) / len(shares) if shares else 0.0


def summarize(record: RunRecord) -> Summary:
    answered = [
        r
        for r in record.requests.values()
        if r.outcome == "granted" or (r.outcome == "rejected" and r.wait)
    ]
    waits = sorted(r.wait for r in answered if r.wait is not None)
    over = sum(
        1
        for r in answered
        if r.wait is not None and r.wait > record.max_wait_secs + r.switch_secs + _SLACK
    )
    return {
        "mean_wait": sum(waits) / len(waits) if waits else 0.0,
        "p50_wait": percentile(waits, 0.50),
        "p99_wait": percentile(waits, 0.99),
        "max_wait": waits[-1] if waits else 0.0,
        "switches": sum(1 for s in record.switches if s.outcome in ("ok", "fallback_cold")),
        "busy_fraction": busy_fraction(record),
        "over_bound": over,
        "completed": sum(1 for r in record.requests.values() if r.completed),
    }


def rounded(summary: Mapping[str, float | int]) -> Summary:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}


def markdown(results: Mapping[str, Mapping[str, float | int]]) -> str:
    """One row per policy: waits in seconds, busy as a percentage."""
    lines = [
        "| policy | mean wait | p50 | p99 | max | switches | GPU busy | over bound | completed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for policy, s in results.items():
        lines.append(
            f"| {policy} | {s['mean_wait']:.1f} s | {s['p50_wait']:.1f} s | "
            f"{s['p99_wait']:.1f} s | {s['max_wait']:.1f} s | {s['switches']} | "
            f"{100 * s['busy_fraction']:.1f} % | {s['over_bound']} | {s['completed']} |"
        )
    return "\n".join(lines)


def bound_line(bound: Mapping[str, object]) -> str:
    """The `--bound` line under the table."""
    return (
        f"bound ({bound['method']}): no policy's p99 wait is below {bound['p99_wait']:.1f} s "
        f"or its GPU busy above {100 * float(str(bound['busy_fraction'])):.1f} %"
    )
