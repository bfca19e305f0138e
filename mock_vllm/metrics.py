"""Prometheus text in vLLM's names, for gpumux's scraping and dashboards.

Owns: the counters/histogram the engine updates (`Stats`) and the exposition text.
Does not: decide values; the engine passes its gauges in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# vLLM's buckets for vllm:time_to_first_token_seconds.
TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * len(self.buckets)
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.n += 1


@dataclass
class Stats:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    finished: Counter[str] = field(default_factory=Counter)


def _fmt(value: float) -> str:
    return repr(float(value))


def render(
    stats: Stats, *, model: str, running: int, waiting: int, kv_usage: float, sleep_state: str
) -> str:
    """The whole ``/metrics`` page."""
    escaped = model.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    base = f'model_name="{escaped}",engine="0"'
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    family("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.")
    lines.append(f"vllm:num_requests_running{{{base}}} {_fmt(running)}")
    family("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.")
    lines.append(f"vllm:num_requests_waiting{{{base}}} {_fmt(waiting)}")
    family("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.")
    lines.append(f"vllm:kv_cache_usage_perc{{{base}}} {_fmt(kv_usage)}")
    family("vllm:engine_sleep_state", "gauge", "Engine sleep state; 1 marks the current one.")
    for state in SLEEP_STATES:
        value = 1 if state == sleep_state else 0
        lines.append(f'vllm:engine_sleep_state{{{base},sleep_state="{state}"}} {_fmt(value)}')
    family("vllm:prompt_tokens", "counter", "Number of prefill tokens processed.")
    lines.append(f"vllm:prompt_tokens_total{{{base}}} {_fmt(stats.prompt_tokens)}")
    family("vllm:generation_tokens", "counter", "Number of generation tokens processed.")
    lines.append(f"vllm:generation_tokens_total{{{base}}} {_fmt(stats.generation_tokens)}")
    family("vllm:request_success", "counter", "Count of successfully processed requests.")
    for reason in ("stop", "length", "abort"):
        count = stats.finished.get(reason, 0)
        lines.append(
            f'vllm:request_success_total{{{base},finished_reason="{reason}"}} {_fmt(count)}'
        )
    family(
        "vllm:time_to_first_token_seconds",
        "histogram",
        "Histogram of time to first token in seconds.",
    )
    counts = stats.ttft.counts or [0] * len(stats.ttft.buckets)
    for bound, count in zip(stats.ttft.buckets, counts, strict=True):
        lines.append(
            f'vllm:time_to_first_token_seconds_bucket{{{base},le="{bound}"}} {_fmt(count)}'
        )
    lines.append(
        f'vllm:time_to_first_token_seconds_bucket{{{base},le="+Inf"}} {_fmt(stats.ttft.n)}'
    )
    lines.append(f"vllm:time_to_first_token_seconds_count{{{base}}} {_fmt(stats.ttft.n)}")
    lines.append(f"vllm:time_to_first_token_seconds_sum{{{base}}} {_fmt(stats.ttft.total)}")
    return "\n".join(lines) + "\n"
