"""What a fleet costs and gives: HAProxy + gpumux vs gpumux alone vs direct, then 1–3 nodes.

Part 1, overhead: one gpumux node with one awake `mock_vllm` model, behind an HAProxy
built by `gpumux fleet haproxy-config` (the real CLI, checked with `haproxy -c`). An
aiohttp load generator sends the same chat completion to the backend's own port
("direct"), to gpumux ("gpumux") and to HAProxy ("haproxy"), in short rounds whose mode
order rotates (so drift on the machine falls on every mode alike), at 1 and 16 clients.
Reported: latency p50/p99, requests/s, and CPU ms per request of gpumux, HAProxy, the
backend and the load generator.

Part 2, scaling: the same mixed load — three models, every node configured with all
three but its (fake) GPU holding one at a time, each client sticking to one model with
streamed and whole replies — against fleets of 1, 2 and 3 nodes through HAProxy.
Reported: requests/s, latency p50/p99, errors, bring-ups (cold starts and wakes) and how
the requests spread over the nodes. One node must swap models; three hold one each.

Everything shares this machine's CPUs, so ratios and trends matter, not absolutes.
Longer than most modules: both parts share the fleet set-up and one report, and the
report's tables are most of it.
Run from the repository root: `.venv/bin/python -m bench.fleet [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    Sample,
    chat_body,
    environment,
    environment_lines,
    fmt,
    get_json_async,
    markdown_table,
    mock_args,
    ratio,
    summarize_ms,
    timed_post,
    write_results,
)
from bench.proxy_overhead import CpuMeter
from gpumux.telemetry.log_writer import ACCESS_FLUSH_SECS
from tests.support.daemon import RunningDaemon, mock_model
from tests.support.fleet import (
    STATS_SOCKET,
    generated_config,
    node_configs,
    running_nodes,
    write_fleet,
)
from tests.support.haproxy import Haproxy, running_haproxy

NAME = "fleet"
MODES = ("direct", "gpumux", "haproxy")
MODELS = ("x", "y", "z")
NODES = ("n1", "n2", "n3")
REQUEST_TIMEOUT_SECS = 120.0


@dataclass(frozen=True)
class Plan:
    """How much load; the defaults take about 3 minutes on 2 cores."""

    concurrencies: tuple[int, ...] = (1, 16)
    rounds: int = 6  # per (mode, clients)
    round_secs: float = 1.5
    max_tokens: int = 16
    tokens_per_sec: float = 2000.0
    fleet_sizes: tuple[int, ...] = (1, 2, 3)
    mixed_clients: int = 12
    mixed_secs: float = 20.0
    mixed_max_tokens: int = 16


QUICK = Plan(rounds=2, round_secs=0.6, mixed_secs=6.0, mixed_clients=6)


@dataclass
class Cell:
    mode: str
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    elapsed_secs: float = 0.0
    cpu_secs: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        ok = [s for s in self.samples if s.ok]
        sent = len(self.samples)
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "requests": sent,
            "errors": sent - len(ok),
            "rps": round(ratio(len(ok), self.elapsed_secs), 1),
            "latency_ms": summarize_ms([s.total for s in ok]).as_dict() if ok else None,
            "cpu_ms_per_request": {
                who: round(ratio(1000.0 * secs, sent), 3) for who, secs in self.cpu_secs.items()
            },
        }


async def closed_loop(
    session: aiohttp.ClientSession,
    requests: Iterator[tuple[str, bytes]],
    clients: int,
    duration_secs: float,
) -> tuple[list[Sample], float]:
    """`clients` closed-loop clients, each taking its next (url, body) from `requests`."""
    samples: list[Sample] = []
    started = time.perf_counter()
    deadline = started + duration_secs

    async def client() -> None:
        while time.perf_counter() < deadline:
            url, body = next(requests)
            samples.append(await timed_post(session, url, body))

    async with asyncio.TaskGroup() as group:
        for _ in range(clients):
            group.create_task(client())
    return samples, time.perf_counter() - started


def session_for(clients: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=clients, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECS)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


def repeat(url: str, body: bytes) -> Iterator[tuple[str, bytes]]:
    while True:
        yield url, body


@contextmanager
def fleet_of(
    tmp: Path, models_by_node: dict[str, dict[str, dict[str, Any]]]
) -> Iterator[tuple[dict[str, RunningDaemon], Haproxy, str]]:
    """Nodes and an HAProxy from the generated config; yields (nodes, haproxy, front url)."""
    configs = node_configs(tmp, models_by_node)
    for config in configs.values():
        config["supervision"]["health_interval_secs"] = 30  # no probes inside the timings
    fleet_path = write_fleet(tmp, configs)
    with ExitStack() as stack:
        nodes = stack.enter_context(running_nodes(tmp, configs))
        haproxy = stack.enter_context(
            running_haproxy(generated_config(tmp, fleet_path), tmp / "front", STATS_SOCKET)
        )
        haproxy.wait_agents()
        port = json.loads(fleet_path.read_text())["port"]
        yield nodes, haproxy, f"http://127.0.0.1:{port}"


# ---- part 1: overhead ---------------------------------------------------------------------


async def measure_overhead(
    node: RunningDaemon, haproxy: Haproxy, front: str, plan: Plan
) -> list[Cell]:
    urls = {
        "direct": node.backend_url("m") + "/v1/chat/completions",
        "gpumux": node.url + "/v1/chat/completions",
        "haproxy": front + "/v1/chat/completions",
    }
    body = chat_body("m", max_tokens=plan.max_tokens, stream=False)
    async with session_for(1) as probe:
        first = await timed_post(probe, urls["haproxy"], body)  # cold-starts the backend
        if not first.ok:
            raise SystemExit(f"the fleet could not serve m: {first.error}")
        state = await get_json_async(probe, node.backend_url("m") + "/mock/state")
    meter = CpuMeter(
        {
            "gpumux": node.process.pid,
            "haproxy": haproxy.process.pid,
            "backend": int(state["pid"]),
            "client": os.getpid(),
        }
    )
    cells = []
    for clients in plan.concurrencies:
        sessions = {mode: session_for(clients) for mode in MODES}
        by_mode = {mode: Cell(mode, clients) for mode in MODES}
        try:
            for mode in MODES:  # untimed warm-up: fill each pool
                await closed_loop(sessions[mode], repeat(urls[mode], body), clients, 0.3)
            for round_no in range(plan.rounds):
                shift = round_no % len(MODES)
                for mode in MODES[shift:] + MODES[:shift]:
                    cell = by_mode[mode]
                    before = meter.read()
                    samples, elapsed = await closed_loop(
                        sessions[mode], repeat(urls[mode], body), clients, plan.round_secs
                    )
                    after = meter.read()
                    cell.samples += samples
                    cell.elapsed_secs += elapsed
                    for who in after:
                        cell.cpu_secs[who] = cell.cpu_secs.get(who, 0.0) + after[who] - before[who]
            print(f"  overhead: clients={clients} done", flush=True)
        finally:
            for session in sessions.values():
                await session.close()
        cells += by_mode.values()
    return cells


def added(cells: list[Cell]) -> list[dict[str, Any]]:
    """Per client count: what gpumux adds to direct, and HAProxy to gpumux."""
    index = {(c.mode, c.concurrency): c.as_dict() for c in cells}
    rows = []
    for clients in sorted({c.concurrency for c in cells}):
        d, g, h = (index[(m, clients)] for m in MODES)
        if not (d["latency_ms"] and g["latency_ms"] and h["latency_ms"]):
            continue
        rows.append(
            {
                "concurrency": clients,
                "gpumux_added_p50_ms": round(g["latency_ms"]["p50"] - d["latency_ms"]["p50"], 3),
                "haproxy_added_p50_ms": round(h["latency_ms"]["p50"] - g["latency_ms"]["p50"], 3),
                "haproxy_added_p99_ms": round(h["latency_ms"]["p99"] - g["latency_ms"]["p99"], 3),
                "haproxy_rps_ratio": round(ratio(h["rps"], g["rps"]), 3),
                "haproxy_cpu_ms_per_request": h["cpu_ms_per_request"]["haproxy"],
            }
        )
    return rows


# ---- part 2: scaling under a mixed load -------------------------------------------------


def mixed_requests(front: str, model: str, plan: Plan) -> Iterator[tuple[str, bytes]]:
    """One client's requests: its own model, every other request streamed."""
    bodies = [
        chat_body(model, max_tokens=plan.mixed_max_tokens, stream=stream)
        for stream in (False, True)
    ]
    url = front + "/v1/chat/completions"
    i = 0
    while True:
        yield url, bodies[i % len(bodies)]
        i += 1


def bring_ups(nodes: dict[str, RunningDaemon]) -> Counter[str]:
    found: Counter[str] = Counter()
    for name, daemon in nodes.items():
        found[name] = sum(
            1
            for e in daemon.log_events()
            if e.get("event") == "state_changed" and e.get("after") in ("starting", "waking")
        )
    return found


def served_by(nodes: dict[str, RunningDaemon]) -> dict[str, int]:
    time.sleep(3 * ACCESS_FLUSH_SECS)  # access lines are written in batches
    return {
        name: sum(1 for e in d.log_events() if e.get("event") == "request_finished")
        for name, d in nodes.items()
    }


async def warm_up(front: str) -> None:
    """Bring each model up somewhere, untimed (one after the other, like first users)."""
    async with session_for(1) as session:
        for model in MODELS:
            await timed_post(
                session,
                front + "/v1/chat/completions",
                chat_body(model, max_tokens=1, stream=False),
            )


async def measure_mixed(front: str, plan: Plan) -> tuple[list[Sample], float]:
    """Each client sticks to one model (client i: MODELS[i % 3]), like users of one model."""
    async with session_for(plan.mixed_clients) as session:
        runs = await asyncio.gather(
            *(
                closed_loop(
                    session,
                    mixed_requests(front, MODELS[i % len(MODELS)], plan),
                    1,
                    plan.mixed_secs,
                )
                for i in range(plan.mixed_clients)
            )
        )
    return [s for samples, _ in runs for s in samples], max(elapsed for _, elapsed in runs)


def scaling_run(tmp: Path, size: int, plan: Plan) -> dict[str, Any]:
    backend = [
        "--gpu-memory-utilization",
        "0.9",
        *mock_args(startup_secs=0.5, sleep_secs=0.1, wake_secs=0.2, ttft_ms=0, tokens_per_sec=200),
        "--disable-uvicorn-access-log",
    ]
    models = {n: {m: mock_model(extra_args=backend) for m in MODELS} for n in NODES[:size]}
    with fleet_of(tmp / f"size{size}", models) as (nodes, _haproxy, front):
        asyncio.run(warm_up(front))
        before_ups, before_served = bring_ups(nodes), served_by(nodes)
        samples, elapsed = asyncio.run(measure_mixed(front, plan))
        ups = bring_ups(nodes) - before_ups
        served = {n: c - before_served[n] for n, c in served_by(nodes).items()}
    ok = [s for s in samples if s.ok]
    print(f"  scaling: {size} node(s) done", flush=True)
    return {
        "nodes": size,
        "requests": len(samples),
        "errors": len(samples) - len(ok),
        "error_kinds": sorted({s.error for s in samples if s.error}),
        "elapsed_s": round(elapsed, 2),
        "rps": round(ratio(len(ok), elapsed), 1),
        "latency_ms": summarize_ms([s.total for s in ok]).as_dict() if ok else None,
        "bring_ups": sum(ups.values()),
        "served_by_node": served,
    }


# ---- report ---------------------------------------------------------------------------------


def render(payload: dict[str, Any]) -> str:
    plan, env = payload["plan"], payload["environment"]
    lines = [
        "# Fleet: HAProxy + gpumux vs gpumux alone vs direct, and 1–3 nodes",
        "",
        *environment_lines(env),
        f"- haproxy {payload['haproxy_version']}; every node, backend, HAProxy and the load "
        f"generator share these {env['cpus_usable']} CPU(s): compare ratios, not absolutes.",
        "",
        "## Overhead (one node, one awake model; chat completions, "
        f"max_tokens {plan['max_tokens']}, not streamed)",
        "",
    ]
    rows = []
    for c in payload["overhead"]:
        lat = c["latency_ms"] or {}
        cpu = c["cpu_ms_per_request"]
        rows.append(
            [
                c["mode"],
                c["concurrency"],
                c["requests"],
                c["errors"],
                fmt(c["rps"], 0),
                fmt(lat.get("p50")),
                fmt(lat.get("p99")),
                fmt(cpu.get("gpumux"), 3),
                fmt(cpu.get("haproxy"), 3),
                fmt(cpu.get("backend"), 3),
                fmt(cpu.get("client"), 3),
            ]
        )
    lines.append(
        markdown_table(
            [
                "mode",
                "clients",
                "requests",
                "errors",
                "req/s",
                "p50 (ms)",
                "p99 (ms)",
                "gpumux CPU (ms/req)",
                "HAProxy CPU (ms/req)",
                "backend CPU (ms/req)",
                "client CPU (ms/req)",
            ],
            rows,
        )
    )
    lines += ["", "What each hop adds (p50 differences; ratio haproxy / gpumux):", ""]
    lines.append(
        markdown_table(
            [
                "clients",
                "gpumux adds p50 (ms)",
                "HAProxy adds p50 (ms)",
                "HAProxy adds p99 (ms)",
                "req/s ratio",
                "HAProxy CPU (ms/req)",
            ],
            [
                [
                    d["concurrency"],
                    fmt(d["gpumux_added_p50_ms"], 3),
                    fmt(d["haproxy_added_p50_ms"], 3),
                    fmt(d["haproxy_added_p99_ms"], 3),
                    fmt(d["haproxy_rps_ratio"], 3),
                    fmt(d["haproxy_cpu_ms_per_request"], 3),
                ]
                for d in payload["added"]
            ],
        )
    )
    lines += [
        "",
        "## Scaling: the same mixed load on 1, 2 and 3 nodes (through HAProxy)",
        "",
        f"{plan['mixed_clients']} clients for {plan['mixed_secs']:g} s, each sticking to one of "
        f"the models {', '.join(MODELS)} (every other request streamed, max_tokens "
        f"{plan['mixed_max_tokens']}); every node configured with all three, its GPU holding "
        "one at a time (mock: start 0.5 s, sleep 0.1 s, wake 0.2 s, 200 tokens/s).",
        "",
    ]
    lines.append(
        markdown_table(
            [
                "nodes",
                "requests",
                "errors",
                "req/s",
                "p50 (ms)",
                "p99 (ms)",
                "bring-ups",
                "requests per node",
            ],
            [
                [
                    r["nodes"],
                    r["requests"],
                    r["errors"],
                    fmt(r["rps"], 1),
                    fmt((r["latency_ms"] or {}).get("p50"), 0),
                    fmt((r["latency_ms"] or {}).get("p99"), 0),
                    r["bring_ups"],
                    ", ".join(f"{n} {c}" for n, c in r["served_by_node"].items()),
                ]
                for r in payload["scaling"]
            ],
        )
    )
    lines += [
        "",
        "Latency is the whole reply; percentiles pool every round. CPU is user+system time of "
        "each process during the timed rounds divided by requests sent. Bring-ups count cold "
        "starts and wakes during the timed window, on all nodes.",
    ]
    return "\n".join(lines)


def haproxy_version() -> str:
    out = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, check=False).stdout
    return out.split()[2] if out.startswith("HAProxy version") else "unknown"


def parse_args(argv: list[str] | None) -> tuple[Plan, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    parser.add_argument("--name", help="results file stem (default fleet[_quick])")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    return plan, args.name or (NAME + "_quick" if args.quick else NAME)


def main(argv: list[str] | None = None) -> int:
    plan, name = parse_args(argv)
    env = environment()
    started = time.perf_counter()
    backend = [
        *mock_args(
            ttft_ms=0, tokens_per_sec=plan.tokens_per_sec, startup_secs=0, keepalive_timeout_secs=60
        ),
        "--disable-uvicorn-access-log",
    ]
    with tempfile.TemporaryDirectory(prefix="gpumux-bench-fleet-") as tmp:
        with fleet_of(Path(tmp) / "overhead", {"n1": {"m": mock_model(extra_args=backend)}}) as (
            nodes,
            haproxy,
            front,
        ):
            cells = asyncio.run(measure_overhead(nodes["n1"], haproxy, front, plan))
        scaling = [scaling_run(Path(tmp), size, plan) for size in plan.fleet_sizes]
    payload: dict[str, Any] = {
        "bench": NAME,
        "environment": env,
        "haproxy_version": haproxy_version(),
        "plan": {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(plan).items()
        },
        "wall_s": round(time.perf_counter() - started, 1),
        "overhead": [c.as_dict() for c in cells],
        "added": added(cells),
        "scaling": scaling,
    }
    markdown = render(payload)
    json_path, md_path = write_results(name, payload, markdown)
    print(markdown)
    print(f"\nwrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
