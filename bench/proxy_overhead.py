"""What the proxy costs: the same mock backend hit directly and through gpumux, in one run.

gpumux is started with one model; its first request cold-starts the `mock_vllm` backend.
Then, for each concurrency (1, 16, 64 clients) and each reply kind (whole JSON, SSE
stream), an aiohttp load generator alternates between the backend's own port ("direct")
and gpumux's port ("gpumux") in short rounds, ABBA-ordered so that drift (other work on
the machine, a warming heap) falls on both modes alike. Each mode has its own
ClientSession whose pool holds exactly `concurrency` connections and stays warm between
rounds (one untimed warm-up per mode first); a round is bounded by a request count and a
duration.

Reported per (mode, clients, stream): requests/s, latency p50/p99 (whole reply), time to
first byte p50/p99 and tokens/s for streams, and CPU milliseconds per request spent by
the daemon, the backend and the load generator. Derived per (clients, stream): latency
gpumux adds (p50/p99 difference) and the throughput ratio gpumux/direct. Targets from
the core-daemon issue: ≤ 1 ms added p50 at 1 client; ≥ 80 % of direct throughput at 64
streaming clients.

Run from the repository root: `.venv/bin/python -m bench.proxy_overhead [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.common import (
    Sample,
    chat_body,
    environment,
    environment_lines,
    fmt,
    get_json_async,
    markdown_table,
    mock_args,
    publish,
    ratio,
    summarize_ms,
    timed_post,
)
from tests.support.daemon import RunningDaemon, mock_model, running_daemon

NAME = "proxy_overhead"
MODEL = "m"
MODES = ("direct", "gpumux")
ADDED_P50_TARGET_MS = 1.0
THROUGHPUT_TARGET = 0.80
REQUEST_TIMEOUT_SECS = 30.0


@dataclass(frozen=True)
class Plan:
    """How much load to send; the defaults finish in about 2–3 minutes on 2 cores."""

    concurrencies: tuple[int, ...] = (1, 16, 64)
    rounds: int = 6  # per (mode, clients, stream); an even count keeps ABBA balanced
    round_secs: float = 1.7
    round_max_requests: int = 5000
    max_tokens: int = 16
    tokens_per_sec: float = 2000.0
    idle_models: int = 0  # extra configured models that are never requested (never start)

    @property
    def budget_secs(self) -> float:
        return len(self.concurrencies) * 2 * len(MODES) * self.rounds * self.round_secs


QUICK = Plan(rounds=2, round_secs=0.6, round_max_requests=1000)


@dataclass
class Cell:
    """Everything measured for one (mode, clients, stream), summed over its rounds."""

    mode: str
    concurrency: int
    stream: bool
    samples: list[Sample] = field(default_factory=list)
    elapsed_secs: float = 0.0
    cpu_secs: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    @property
    def errors(self) -> int:
        return len(self.samples) - len(self.ok)

    @property
    def rps(self) -> float:
        return ratio(len(self.ok), self.elapsed_secs)

    @property
    def tokens_per_sec(self) -> float:
        return ratio(sum(s.completion_tokens for s in self.ok), self.elapsed_secs)

    def cpu_ms_per_request(self, who: str) -> float:
        return ratio(1000.0 * self.cpu_secs.get(who, 0.0), len(self.samples))

    def as_dict(self) -> dict[str, Any]:
        ok = self.ok
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "stream": self.stream,
            "requests": len(self.samples),
            "errors": self.errors,
            "error_kinds": sorted({s.error for s in self.samples if s.error}),
            "elapsed_s": round(self.elapsed_secs, 3),
            "rps": round(self.rps, 1),
            "tokens_per_s": round(self.tokens_per_sec, 1),
            "latency_ms": summarize_ms([s.total for s in ok]).as_dict() if ok else None,
            "ttfb_ms": summarize_ms([s.ttfb for s in ok]).as_dict() if ok else None,
            "cpu_ms_per_request": {
                who: round(self.cpu_ms_per_request(who), 3) for who in self.cpu_secs
            },
        }


class CpuMeter:
    """CPU seconds (user + system) consumed by named processes between two readings."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._procs = {who: psutil.Process(pid) for who, pid in pids.items()}

    def read(self) -> dict[str, float]:
        readings = {}
        for who, proc in self._procs.items():
            times = proc.cpu_times()
            readings[who] = times.user + times.system
        return readings


async def run_phase(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    concurrency: int,
    *,
    max_requests: int,
    duration_secs: float,
) -> tuple[list[Sample], float]:
    """`concurrency` closed-loop clients until `max_requests` are sent or time is up."""
    samples: list[Sample] = []
    remaining = max_requests
    started = time.perf_counter()
    deadline = started + duration_secs

    async def client() -> None:
        nonlocal remaining
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            samples.append(await timed_post(session, url, body))

    async with asyncio.TaskGroup() as clients:
        for _ in range(concurrency):
            clients.create_task(client())
    return samples, time.perf_counter() - started


def new_session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECS)
    )


async def measure(daemon: RunningDaemon, plan: Plan) -> tuple[list[Cell], dict[str, Any]]:
    urls = {
        "direct": daemon.backend_url(MODEL) + "/v1/chat/completions",
        "gpumux": daemon.url + "/v1/chat/completions",
    }
    async with new_session(1) as probe:
        # The first request through gpumux cold-starts the backend; both modes then share it.
        first = await timed_post(
            probe, urls["gpumux"], chat_body(MODEL, max_tokens=1, stream=False)
        )
        if not first.ok:
            raise SystemExit(f"gpumux could not serve {MODEL!r}: {first.error}")
        state = await get_json_async(probe, daemon.backend_url(MODEL) + "/mock/state")
    backend_pid = int(state["pid"])
    meter = CpuMeter({"daemon": daemon.process.pid, "backend": backend_pid, "client": os.getpid()})
    cells: list[Cell] = []
    for concurrency in plan.concurrencies:
        sessions = {mode: new_session(concurrency) for mode in MODES}
        try:
            for stream in (False, True):
                body = chat_body(MODEL, max_tokens=plan.max_tokens, stream=stream)
                by_mode = {mode: Cell(mode, concurrency, stream) for mode in MODES}
                for round_no in range(plan.rounds):
                    # ABBA: direct first in even rounds, gpumux first in odd ones.
                    order = MODES if round_no % 2 == 0 else tuple(reversed(MODES))
                    for mode in order:
                        cell = by_mode[mode]
                        session, url = sessions[mode], urls[mode]
                        if round_no == 0:  # warm-up: fill the pool (it stays warm), untimed
                            await run_phase(
                                session,
                                url,
                                body,
                                concurrency,
                                max_requests=3 * concurrency,
                                duration_secs=plan.round_secs,
                            )
                        before = meter.read()
                        samples, elapsed = await run_phase(
                            session,
                            url,
                            body,
                            concurrency,
                            max_requests=plan.round_max_requests,
                            duration_secs=plan.round_secs,
                        )
                        after = meter.read()
                        cell.samples += samples
                        cell.elapsed_secs += elapsed
                        for who in after:
                            cell.cpu_secs[who] = (
                                cell.cpu_secs.get(who, 0.0) + after[who] - before[who]
                            )
                    print(
                        f"  clients={concurrency:<3} stream={stream!s:<5} round {round_no + 1}/"
                        f"{plan.rounds} done",
                        flush=True,
                    )
                cells += by_mode.values()
        finally:
            for session in sessions.values():
                await session.close()
    return cells, {"backend_pid": backend_pid, "daemon_pid": daemon.process.pid}


# ---- derived numbers and the report ------------------------------------------------------


def derive(cells: list[Cell]) -> list[dict[str, Any]]:
    """Per (clients, stream): what gpumux adds to latency and keeps of throughput."""
    index = {(c.mode, c.concurrency, c.stream): c for c in cells}
    rows = []
    for cell in cells:
        if cell.mode != "direct":
            continue
        direct, proxied = cell, index[("gpumux", cell.concurrency, cell.stream)]
        if not direct.ok or not proxied.ok:
            continue
        d_total = summarize_ms([s.total for s in direct.ok])
        g_total = summarize_ms([s.total for s in proxied.ok])
        d_ttfb = summarize_ms([s.ttfb for s in direct.ok])
        g_ttfb = summarize_ms([s.ttfb for s in proxied.ok])
        rows.append(
            {
                "concurrency": cell.concurrency,
                "stream": cell.stream,
                "added_p50_ms": round(g_total.p50 - d_total.p50, 3),
                "added_p99_ms": round(g_total.p99 - d_total.p99, 3),
                "added_ttfb_p50_ms": round(g_ttfb.p50 - d_ttfb.p50, 3),
                "added_ttfb_p99_ms": round(g_ttfb.p99 - d_ttfb.p99, 3),
                "rps_ratio": round(ratio(proxied.rps, direct.rps), 4),
                "tokens_ratio": round(ratio(proxied.tokens_per_sec, direct.tokens_per_sec), 4),
                "daemon_cpu_ms_per_request": round(proxied.cpu_ms_per_request("daemon"), 3),
            }
        )
    return rows


def check_targets(derived: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def find(concurrency: int, stream: bool) -> dict[str, Any] | None:
        return next(
            (d for d in derived if d["concurrency"] == concurrency and d["stream"] is stream),
            None,
        )

    checks: list[dict[str, Any]] = []
    one = find(1, False)
    checks.append(
        {
            "target": f"added p50 latency at 1 client (non-streaming) <= {ADDED_P50_TARGET_MS} ms",
            "value": one["added_p50_ms"] if one else None,
            "unit": "ms",
            "met": one["added_p50_ms"] <= ADDED_P50_TARGET_MS if one else None,
        }
    )
    one_stream = find(1, True)
    checks.append(
        {
            "target": f"added TTFB p50 at 1 client (streaming) <= {ADDED_P50_TARGET_MS} ms",
            "value": one_stream["added_ttfb_p50_ms"] if one_stream else None,
            "unit": "ms",
            "met": one_stream["added_ttfb_p50_ms"] <= ADDED_P50_TARGET_MS if one_stream else None,
        }
    )
    many = find(64, True)
    checks.append(
        {
            "target": f"tokens/s at 64 streaming clients >= {THROUGHPUT_TARGET:.0%} of direct",
            "value": many["tokens_ratio"] if many else None,
            "unit": "ratio",
            "met": many["tokens_ratio"] >= THROUGHPUT_TARGET if many else None,
        }
    )
    return checks


def render(payload: dict[str, Any]) -> str:
    plan = payload["plan"]
    env = payload["environment"]
    lines = [
        "# Proxy overhead: gpumux vs the same mock backend directly",
        "",
        *environment_lines(env),
        f"- Load generator, gpumux and the backend all share these {env['cpus_usable']} "
        "CPU(s): a cost in one process slows the others, so ratios matter, not absolutes.",
        f"- Backend: mock_vllm, ttft 0 ms, {plan['tokens_per_sec']:g} tokens/s, "
        f"max_tokens {plan['max_tokens']}, access log off; chat completions; "
        f"{plan['idle_models']} other configured model(s), never requested.",
        f"- {plan['rounds']} ABBA-interleaved rounds of <= {plan['round_secs']:g} s / "
        f"{plan['round_max_requests']} requests each per (mode, clients, stream), after one "
        "untimed warm-up per mode (connection pools stay warm between rounds).",
        "",
        "## Per mode",
        "",
    ]
    rows = []
    for c in payload["cells"]:
        lat, ttfb = c["latency_ms"] or {}, c["ttfb_ms"] or {}
        cpu = c["cpu_ms_per_request"]
        rows.append(
            [
                c["mode"],
                c["concurrency"],
                "yes" if c["stream"] else "no",
                c["requests"],
                c["errors"],
                fmt(c["rps"], 0),
                fmt(lat.get("p50")),
                fmt(lat.get("p99")),
                fmt(ttfb.get("p50")) if c["stream"] else "–",
                fmt(ttfb.get("p99")) if c["stream"] else "–",
                fmt(c["tokens_per_s"], 0) if c["stream"] else "–",
                fmt(cpu.get("daemon"), 3),
                fmt(cpu.get("backend"), 3),
                fmt(cpu.get("client"), 3),
            ]
        )
    lines.append(
        markdown_table(
            [
                "mode",
                "clients",
                "stream",
                "requests",
                "errors",
                "req/s",
                "latency p50 (ms)",
                "latency p99 (ms)",
                "TTFB p50 (ms)",
                "TTFB p99 (ms)",
                "tokens/s",
                "gpumux CPU (ms/req)",
                "backend CPU (ms/req)",
                "client CPU (ms/req)",
            ],
            rows,
        )
    )
    lines += ["", "## What gpumux adds (gpumux − direct; ratio gpumux / direct)", ""]
    lines.append(
        markdown_table(
            [
                "clients",
                "stream",
                "added p50 (ms)",
                "added p99 (ms)",
                "added TTFB p50 (ms)",
                "added TTFB p99 (ms)",
                "req/s ratio",
                "tokens/s ratio",
                "gpumux CPU (ms/req)",
            ],
            [
                [
                    d["concurrency"],
                    "yes" if d["stream"] else "no",
                    fmt(d["added_p50_ms"], 3),
                    fmt(d["added_p99_ms"], 3),
                    fmt(d["added_ttfb_p50_ms"], 3) if d["stream"] else "–",
                    fmt(d["added_ttfb_p99_ms"], 3) if d["stream"] else "–",
                    fmt(d["rps_ratio"], 3),
                    fmt(d["tokens_ratio"], 3) if d["stream"] else "–",
                    fmt(d["daemon_cpu_ms_per_request"], 3),
                ]
                for d in payload["derived"]
            ],
        )
    )
    lines += ["", "## Targets", ""]
    for check in payload["targets"]:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[check["met"]]
        lines.append(f"- {check['target']}: {fmt(check['value'], 3)} {check['unit']} — {verdict}")
    lines += [
        "",
        "Latency is the whole reply (for streams, until the last SSE byte); TTFB is the "
        "first body byte; percentiles pool every round's samples. CPU is user+system time "
        "of each process during the timed rounds divided by requests sent.",
    ]
    return "\n".join(lines)


# ---- entry point -------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[Plan, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a ~20 s smoke run")
    parser.add_argument("--rounds", type=int, help="rounds per (mode, clients, stream)")
    parser.add_argument("--round-secs", type=float, help="seconds per round")
    parser.add_argument("--concurrency", type=int, nargs="+", help="client counts to try")
    parser.add_argument("--max-tokens", type=int, help="tokens per reply")
    parser.add_argument("--tokens-per-sec", type=float, help="mock backend decode speed")
    parser.add_argument(
        "--idle-models",
        type=int,
        help="also configure N models that are never requested (scheduler cost per model)",
    )
    parser.add_argument("--name", help="results file stem (default proxy_overhead[_quick])")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    overrides: dict[str, Any] = {
        "rounds": args.rounds,
        "round_secs": args.round_secs,
        "concurrencies": tuple(args.concurrency) if args.concurrency else None,
        "max_tokens": args.max_tokens,
        "tokens_per_sec": args.tokens_per_sec,
        "idle_models": args.idle_models,
    }
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    if plan.rounds < 1 or plan.round_secs <= 0 or plan.round_max_requests < 1:
        parser.error("rounds, round seconds and requests per round must be positive")
    if plan.idle_models < 0:
        parser.error("--idle-models must be >= 0")
    if any(c < 1 for c in plan.concurrencies):
        parser.error("every concurrency must be >= 1")
    name = args.name or (NAME + "_quick" if args.quick else NAME)
    return plan, name


def main(argv: list[str] | None = None) -> int:
    plan, name = parse_args(argv)
    env = environment()
    backend_args = mock_args(
        ttft_ms=0,
        tokens_per_sec=plan.tokens_per_sec,
        startup_secs=0,
        keepalive_timeout_secs=60,  # direct-mode pools stay warm while gpumux takes its turn
    )
    models = {MODEL: mock_model(extra_args=[*backend_args, "--disable-uvicorn-access-log"])}
    models.update({f"idle{i}": mock_model() for i in range(plan.idle_models)})
    print(f"{NAME}: about {plan.budget_secs:.0f} s of load; results → bench/results/{name}.*")
    with (
        tempfile.TemporaryDirectory(prefix="gpumux-bench-") as tmp,
        running_daemon(Path(tmp), models) as daemon,
    ):
        started = time.perf_counter()
        cells, pids = asyncio.run(measure(daemon, plan))
        wall = time.perf_counter() - started
    derived = derive(cells)
    payload: dict[str, Any] = {
        "bench": NAME,
        "environment": env,
        "plan": {**plan.__dict__, "concurrencies": list(plan.concurrencies)},
        "wall_s": round(wall, 1),
        "processes": pids,
        "cells": [c.as_dict() for c in cells],
        "derived": derived,
        "targets": check_targets(derived),
    }
    markdown = render(payload)
    publish(name, payload, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
