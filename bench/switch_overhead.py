"""What a switch costs beyond the backend's own sleep and wake, measured in one run.

Two `mock_vllm` models at `--gpu-memory-utilization 0.9` share one fake 80 GiB GPU, so
only one can be awake and every alternation between them is a switch. The mock's sleep,
wake, reload and startup latencies are zero, so what remains is HTTP round trips and
gpumux's own work (queueing, the scheduler's decisions, drain, the orchestrator's steps,
forwarding). `min_active_secs` is 0; eviction is `offload+keep_running` and, in a second
daemon, `discard+keep_running`.

Each alternation, with model X awake and Y asleep:
1. direct: the bench itself puts X to sleep and wakes it on X's own port, timing every
   call (offload: `POST /sleep?level=1&mode=wait`, `POST /wake_up`; discard: `level=2`,
   then `wake_up?tags=weights`, `collective_rpc reload_weights`, `wake_up?tags=kv_cache`,
   `reset_prefix_cache`) — the same calls gpumux makes, against the same processes;
2. switch: a streaming request for Y through gpumux (sleep X, wake Y, forward), timed to
   its first body byte;
3. baseline: a second request for Y, which is now awake (no switch), timed the same way.

Overhead per alternation = switch TTFB − (direct sleep+wake + baseline TTFB), then
p50/p99 over the alternations. gpumux's own `switch_finished` log events give its view of
each switch (duration and phases) alongside. Target from the core-daemon issue: ≤ 10 ms.

Run from the repository root: `.venv/bin/python -m bench.switch_overhead [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    chat_body,
    environment,
    environment_lines,
    fmt,
    markdown_table,
    mock_args,
    publish,
    summarize_ms,
    timed_post,
)
from tests.support.daemon import RunningDaemon, mock_model, running_daemon

NAME = "switch_overhead"
MODELS = ("a", "b")
#: Every switch here pays its victim's eviction on the request's path, as it did before
#: this round: eviction ahead of need (which would move it off the path under strict
#: alternation, `bench/switch_ahead.py` measures that) is off, and the policy is fifo so
#: runs compare across trees.
BENCH_POLICY = {"min_active_secs": 0, "policy_type": "fifo", "evict_ahead": False}
OVERHEAD_TARGET_MS = 10.0
CALL_TIMEOUT_SECS = 30.0

#: The backend's own calls for one sleep+wake cycle, per weights strategy, as gpumux makes
#: them (design §3): (label, method, path, query, JSON body).
_Call = tuple[str, str, str, list[tuple[str, str]], dict[str, str] | None]
DIRECT_CALLS: dict[str, list[_Call]] = {
    "offload": [
        ("sleep", "POST", "/sleep", [("level", "1"), ("mode", "wait")], None),
        ("wake_up", "POST", "/wake_up", [], None),
    ],
    "discard": [
        ("sleep", "POST", "/sleep", [("level", "2"), ("mode", "wait")], None),
        ("wake_weights", "POST", "/wake_up", [("tags", "weights")], None),
        ("reload_weights", "POST", "/collective_rpc", [], {"method": "reload_weights"}),
        ("wake_kv_cache", "POST", "/wake_up", [("tags", "kv_cache")], None),
        ("reset_prefix_cache", "POST", "/reset_prefix_cache", [], None),
    ],
}


@dataclass(frozen=True)
class Plan:
    alternations: int = 30
    warmup_alternations: int = 3
    max_tokens: int = 4
    variants: tuple[str, ...] = ("offload", "discard")
    idle_models: int = 0  # extra configured models that are never requested (never start)


QUICK = Plan(alternations=8, warmup_alternations=2)


@dataclass
class Alternation:
    """One measured alternation: seconds, from the client's side."""

    target: str
    direct_calls: dict[str, float]
    switch_ttfb: float
    baseline_ttfb: float

    @property
    def direct_total(self) -> float:
        return sum(self.direct_calls.values())

    @property
    def overhead(self) -> float:
        return self.switch_ttfb - (self.direct_total + self.baseline_ttfb)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "direct_ms": {k: round(v * 1000, 3) for k, v in self.direct_calls.items()},
            "direct_total_ms": round(self.direct_total * 1000, 3),
            "switch_ttfb_ms": round(self.switch_ttfb * 1000, 3),
            "baseline_ttfb_ms": round(self.baseline_ttfb * 1000, 3),
            "overhead_ms": round(self.overhead * 1000, 3),
        }


@dataclass
class Variant:
    weights: str
    alternations: list[Alternation] = field(default_factory=list)
    gpumux_switches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def eviction(self) -> str:
        return f"{self.weights}+keep_running"


async def timed_call(session: aiohttp.ClientSession, base_url: str, call: _Call) -> float:
    """One control call to a backend; its duration in seconds. Raises on a non-2xx reply."""
    label, method, path, query, body = call
    started = time.perf_counter()
    async with session.request(method, base_url + path, params=query, json=body) as response:
        await response.read()
        if response.status // 100 != 2:
            raise RuntimeError(f"direct {label} answered HTTP {response.status}")
    return time.perf_counter() - started


async def direct_cycle(
    session: aiohttp.ClientSession, base_url: str, weights: str
) -> dict[str, float]:
    return {call[0]: await timed_call(session, base_url, call) for call in DIRECT_CALLS[weights]}


async def serve_through_gpumux(
    session: aiohttp.ClientSession, url: str, body: bytes, what: str
) -> float:
    sample = await timed_post(session, url, body)
    if not sample.ok:
        raise RuntimeError(f"{what} request failed through gpumux: {sample.error}")
    return sample.ttfb


async def alternate(daemon: RunningDaemon, plan: Plan, variant: Variant) -> None:
    url = daemon.url + "/v1/chat/completions"
    bodies = {m: chat_body(m, max_tokens=plan.max_tokens, stream=True) for m in MODELS}
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_SECS)
    async with (
        aiohttp.ClientSession(timeout=timeout) as proxy,
        aiohttp.ClientSession(timeout=timeout) as control,
    ):
        # Cold-start both (b's start puts a to sleep); from here on b is awake.
        for model in MODELS:
            await serve_through_gpumux(proxy, url, bodies[model], f"cold start of {model}")
        awake = MODELS[1]
        for i in range(plan.warmup_alternations + plan.alternations):
            target = MODELS[0] if awake == MODELS[1] else MODELS[1]
            calls = await direct_cycle(control, daemon.backend_url(awake), variant.weights)
            switch = await serve_through_gpumux(proxy, url, bodies[target], "switch")
            baseline = await serve_through_gpumux(proxy, url, bodies[target], "baseline")
            awake = target
            if i >= plan.warmup_alternations:
                variant.alternations.append(Alternation(target, calls, switch, baseline))


def gpumux_switches(daemon: RunningDaemon, plan: Plan) -> list[dict[str, Any]]:
    """gpumux's own record of the measured switches (the last `alternations` warm ones)."""
    warm = [
        e
        for e in daemon.log_events()
        if e.get("event") == "switch_finished" and e.get("victims") and e.get("outcome") == "ok"
    ]
    return warm[-plan.alternations :]


def run_variant(plan: Plan, weights: str) -> Variant:
    knobs = mock_args(
        sleep_secs=0, wake_secs=0, reload_secs=0, startup_secs=0, ttft_ms=0, tokens_per_sec=2000
    )
    eviction = {"weights": weights, "process": "keep_running"}
    models = {
        m: mock_model(extra_args=[*knobs, "--disable-uvicorn-access-log"], eviction=eviction)
        for m in MODELS
    }
    models.update({f"idle{i}": mock_model() for i in range(plan.idle_models)})
    variant = Variant(weights)
    with (
        tempfile.TemporaryDirectory(prefix="gpumux-bench-") as tmp,
        running_daemon(Path(tmp), models, policy=BENCH_POLICY) as daemon,
    ):
        asyncio.run(alternate(daemon, plan, variant))
        variant.gpumux_switches = gpumux_switches(daemon, plan)
    return variant


# ---- the report --------------------------------------------------------------------------


def _series(values: Sequence[float]) -> dict[str, float | int] | None:
    return summarize_ms(values).as_dict() if values else None


def variant_result(variant: Variant) -> dict[str, Any]:
    alts = variant.alternations
    labels = [call[0] for call in DIRECT_CALLS[variant.weights]]
    durations = [float(e["duration_s"]) for e in variant.gpumux_switches]
    phases: dict[str, list[float]] = {}
    for event in variant.gpumux_switches:
        for phase, secs in event.get("phases", {}).items():
            phases.setdefault(phase, []).append(float(secs))
    overhead = _series([a.overhead for a in alts])
    return {
        "eviction": variant.eviction,
        "alternations": len(alts),
        "switch_ttfb_ms": _series([a.switch_ttfb for a in alts]),
        "direct_sleep_wake_ms": _series([a.direct_total for a in alts]),
        "baseline_ttfb_ms": _series([a.baseline_ttfb for a in alts]),
        "overhead_ms": overhead,
        "direct_calls_ms": {k: _series([a.direct_calls[k] for a in alts]) for k in labels},
        "gpumux_switch_duration_ms": _series(durations),
        "gpumux_phases_ms": {k: _series(v) for k, v in phases.items()},
        "target": {
            "target": f"switch overhead p50 <= {OVERHEAD_TARGET_MS} ms beyond sleep+wake",
            "value": overhead["p50"] if overhead else None,
            "unit": "ms",
            "met": overhead["p50"] <= OVERHEAD_TARGET_MS if overhead else None,
        },
        "raw": [a.as_dict() for a in alts],
    }


def render(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    lines = [
        "# Switch overhead: gpumux switch vs the backend's own sleep+wake",
        "",
        *environment_lines(env),
        f"- Load generator, gpumux and both backends share these {env['cpus_usable']} CPU(s).",
        "- Two mock_vllm models at 0.9 GPU utilization on one fake 80 GiB GPU: every "
        "alternation is a switch. Mock sleep/wake/reload/startup latencies are 0 s; "
        "`min_active_secs` 0; streaming chat, max_tokens "
        f"{payload['plan']['max_tokens']}; times to the first body byte; "
        f"{payload['plan']['idle_models']} other configured model(s), never requested.",
        "- Overhead = switch TTFB − (direct sleep+wake + baseline TTFB), per alternation.",
        "",
    ]
    rows = []
    for v in payload["variants"]:
        for label, key in (
            ("switch TTFB through gpumux", "switch_ttfb_ms"),
            ("direct sleep+wake (sum of calls)", "direct_sleep_wake_ms"),
            ("baseline TTFB (no switch)", "baseline_ttfb_ms"),
            ("overhead", "overhead_ms"),
            ("gpumux's own switch duration (log)", "gpumux_switch_duration_ms"),
        ):
            s = v[key] or {}
            rows.append(
                [
                    v["eviction"],
                    label,
                    s.get("n", 0),
                    fmt(s.get("p50")),
                    fmt(s.get("p99")),
                    fmt(s.get("mean")),
                ]
            )
    lines.append(
        markdown_table(["eviction", "series", "n", "p50 (ms)", "p99 (ms)", "mean (ms)"], rows)
    )
    lines += ["", "## Breakdown (p50, ms)", ""]
    detail_rows = []
    for v in payload["variants"]:
        for label, s in v["direct_calls_ms"].items():
            detail_rows.append([v["eviction"], f"direct {label}", fmt((s or {}).get("p50"))])
        for label, s in v["gpumux_phases_ms"].items():
            detail_rows.append([v["eviction"], f"gpumux phase {label}", fmt((s or {}).get("p50"))])
    lines.append(markdown_table(["eviction", "part", "p50 (ms)"], detail_rows))
    lines += [
        "",
        "gpumux's phases come from its `switch_finished` log event, which keeps one value "
        "per phase name: for discard, `wake` is only the last of its three wake steps. "
        f"With {payload['plan']['alternations']} alternations, p99 is close to the maximum.",
    ]
    lines += ["", "## Targets", ""]
    for v in payload["variants"]:
        check = v["target"]
        verdict = {True: "met", False: "NOT met", None: "not measured"}[check["met"]]
        lines.append(f"- {v['eviction']}: {check['target']}: {fmt(check['value'])} ms — {verdict}")
    return "\n".join(lines)


# ---- entry point -------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[Plan, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("-n", "--alternations", type=int, help="measured alternations (30)")
    parser.add_argument(
        "--variant", choices=sorted(DIRECT_CALLS), nargs="+", help="weights strategies to run"
    )
    parser.add_argument(
        "--idle-models",
        type=int,
        default=0,
        help="also configure N models that are never requested (scheduler cost per model)",
    )
    parser.add_argument("--name", help="results file stem (default switch_overhead[_quick])")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.alternations is not None and args.alternations < 1:
        parser.error("--alternations must be >= 1")
    if args.idle_models < 0:
        parser.error("--idle-models must be >= 0")
    plan = dataclasses.replace(
        plan,
        alternations=args.alternations or plan.alternations,
        variants=tuple(args.variant or plan.variants),
        idle_models=args.idle_models,
    )
    return plan, args.name or (NAME + "_quick" if args.quick else NAME)


def main(argv: list[str] | None = None) -> int:
    plan, name = parse_args(argv)
    env = environment()
    started = time.perf_counter()
    variants = []
    for weights in plan.variants:
        print(f"{NAME}: {weights}+keep_running, {plan.alternations} alternations", flush=True)
        variants.append(variant_result(run_variant(plan, weights)))
    payload: dict[str, Any] = {
        "bench": NAME,
        "environment": env,
        "plan": {**plan.__dict__, "variants": list(plan.variants)},
        "wall_s": round(time.perf_counter() - started, 1),
        "variants": variants,
    }
    markdown = render(payload)
    publish(name, payload, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
