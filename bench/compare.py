"""Side by side: gpumux's proxy, before and after, against nginx and LiteLLM, in one run.

Five ways to reach the same `mock_vllm` backend: directly; through gpumux (this tree);
through gpumux-before (the daemon of a pinned earlier commit, `--before`, exported with
`git archive` and run by the same interpreter and libraries, so only gpumux's own code
differs); through nginx and through the LiteLLM proxy (`bench/compare_proxies.py`). Each
daemon starts its own backend on its first request, so gpumux-before talks to a second,
identical backend; everything else shares the first.

Load: Debian's `wrk` (`bench/wrk.py`), a C load generator, so the numbers are the
proxies' and not a Python client's. For 1, 16 and 64 closed-loop clients, streaming and
not, short rounds rotate the order of the five modes (after one untimed warm-up each), so
drift on a shared machine falls on all of them alike.

CPU placement (`--pin`, on by default with 2+ CPUs): the proxy under test gets a CPU of
its own and the load generator and backends share another (3+ CPUs: one each), so a
proxy competes with nothing of the benchmark's for its core, and direct and proxied runs
drive the backend from the same place. Other work on the machine is not pinned away.

Reported per (mode, clients, stream): requests/s, latency p50/p99 (whole reply), errors,
and CPU ms per completed request of the proxy's own process tree (user + system, read
from /proc; a gpumux daemon's tree without the backend it spawned), of the backend, and
of `wrk`. Derived: latency each proxy adds over direct, its requests/s as a fraction of
direct, and gpumux's CPU per request as a fraction of gpumux-before's. Targets (issue
16): at 64 streaming clients, gpumux's CPU per request at most half of gpumux-before's
and its requests/s at least 80 % of direct.

Needs `bench/setup-compare.sh` first (wrk, nginx, and LiteLLM in its own venv).
Loopback only. From the repository root: `.venv/bin/python -m bench.compare [--quick]`.
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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import wrk
from bench.common import (
    REPO_ROOT,
    chat_body,
    environment,
    get_json_async,
    mock_args,
    publish,
    ratio,
    timed_post,
)
from bench.compare_cpu import TreeCpuMeter, choose_placement, pin_tree
from bench.compare_proxies import MODEL, litellm, nginx, versions
from bench.compare_report import MODES, check_targets, derive, render
from bench.proxy_overhead import new_session
from tests.support.daemon import RunningDaemon, mock_model, running_daemon

NAME = "compare"
#: gpumux before issue 16's proxy work: main just before it merged (today's features,
#: the old proxy).
BEFORE_REV = "8f7f240"
WARMUP_SECS = 1


@dataclass(frozen=True)
class Plan:
    """How much load to send; the defaults take about 6 minutes."""

    concurrencies: tuple[int, ...] = (1, 16, 64)
    rounds: int = 5  # per (mode, clients, stream); the mode order rotates every round
    round_secs: int = 2  # wrk takes whole seconds
    max_tokens: int = 16
    tokens_per_sec: float = 2000.0

    @property
    def budget_secs(self) -> float:
        per_cell = self.rounds * self.round_secs + WARMUP_SECS
        return len(self.concurrencies) * 2 * len(MODES) * per_cell


QUICK = Plan(rounds=2, round_secs=1)


# ---- the two gpumux daemons ------------------------------------------------------------------


def export_tree(rev: str, into: Path) -> str:
    """`rev`'s `src/` under `into` (git archive); returns the full commit id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "src"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    if not (into / "src" / "gpumux" / "__init__.py").exists():
        raise SystemExit(f"{rev} has no src/gpumux")
    return commit


@contextmanager
def gpumux_daemon(
    tmp: Path, plan: Plan, src: Path | None = None
) -> Iterator[tuple[RunningDaemon, int]]:
    """A daemon with one mock model, its backend started; yields it and the backend's pid.
    `src` runs another tree's gpumux (PYTHONPATH) with this interpreter and libraries."""
    backend_args = mock_args(
        ttft_ms=0, tokens_per_sec=plan.tokens_per_sec, startup_secs=0, keepalive_timeout_secs=60
    )
    models = {MODEL: mock_model(extra_args=[*backend_args, "--disable-uvicorn-access-log"])}
    env = {"PYTHONPATH": str(src)} if src else None
    with running_daemon(tmp, models, env=env) as daemon:
        yield daemon, asyncio.run(start_backend(daemon))


async def start_backend(daemon: RunningDaemon) -> int:
    async with new_session(1) as probe:
        first = await timed_post(
            probe, daemon.url + "/v1/chat/completions", chat_body(MODEL, max_tokens=1, stream=False)
        )
        if not first.ok:
            raise SystemExit(f"gpumux could not serve {MODEL!r}: {first.error}")
        state = await get_json_async(probe, daemon.backend_url(MODEL) + "/mock/state")
    return int(state["pid"])


async def check_replies(urls: dict[str, str], max_tokens: int) -> dict[str, Any]:
    """One request per mode and kind: what each proxy returns, before any timing."""
    notes: dict[str, Any] = {}
    async with new_session(1) as session:
        for mode, url in urls.items():
            for stream in (False, True):
                sample = await timed_post(
                    session, url, chat_body(MODEL, max_tokens=max_tokens, stream=stream)
                )
                notes[f"{mode} {'stream' if stream else 'whole'}"] = {
                    "ok": sample.ok and sample.completion_tokens == max_tokens,
                    "status": sample.status,
                    "completion_tokens": sample.completion_tokens,
                    "error": sample.error,
                }
    return notes


# ---- measuring -------------------------------------------------------------------------------


@dataclass
class Cell:
    """Everything measured for one (mode, clients, stream), summed over its rounds."""

    mode: str
    concurrency: int
    stream: bool
    rounds: list[wrk.Round] = field(default_factory=list)
    cpu_secs: dict[str, float] = field(default_factory=dict)  # user + system
    system_secs: dict[str, float] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.rounds)

    @property
    def rps(self) -> float:
        return ratio(self.requests, sum(r.elapsed_secs for r in self.rounds))

    def latency_ms(self, q: float) -> float:
        return 1000 * wrk.merged_percentile(self.rounds, q) if self.requests else float("nan")

    def cpu_ms_per_request(self, who: str) -> float:
        return ratio(1000.0 * self.cpu_secs.get(who, 0.0), self.requests)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "stream": self.stream,
            "requests": self.requests,
            "errors": sum(r.errors for r in self.rounds),
            "elapsed_s": round(sum(r.elapsed_secs for r in self.rounds), 3),
            "rps": round(self.rps, 1),
            "latency_ms": {
                "p50": round(self.latency_ms(50), 3),
                "p99": round(self.latency_ms(99), 3),
            },
            "cpu_ms_per_request": {
                who: round(self.cpu_ms_per_request(who), 4) for who in sorted(self.cpu_secs)
            },
            "system_cpu_ms_per_request": {
                who: round(ratio(1000.0 * secs, self.requests), 4)
                for who, secs in sorted(self.system_secs.items())
            },
        }


def run_cells(
    plan: Plan, urls: dict[str, str], meter: TreeCpuMeter, loadgen: frozenset[int] | None, tmp: Path
) -> list[Cell]:
    cells: list[Cell] = []
    for concurrency in plan.concurrencies:
        for stream in (False, True):
            body = chat_body(MODEL, max_tokens=plan.max_tokens, stream=stream)
            script = wrk.write_script(tmp / f"{'stream' if stream else 'whole'}.lua", body)
            by_mode = {mode: Cell(mode, concurrency, stream) for mode in MODES}
            for mode in MODES:  # warm-up, untimed
                wrk.run_round(urls[mode], script, concurrency, WARMUP_SECS, loadgen)
            for round_no in range(plan.rounds):
                shift = round_no % len(MODES)
                for mode in MODES[shift:] + MODES[:shift]:
                    cell = by_mode[mode]
                    before = meter.read()
                    result = wrk.run_round(
                        urls[mode], script, concurrency, plan.round_secs, loadgen
                    )
                    after = meter.read()
                    cell.rounds.append(result)
                    for who, (user, system) in after.items():
                        used = user + system - sum(before[who])
                        cell.cpu_secs[who] = cell.cpu_secs.get(who, 0.0) + used
                        spent = system - before[who][1]
                        cell.system_secs[who] = cell.system_secs.get(who, 0.0) + spent
                    cell.cpu_secs["wrk"] = cell.cpu_secs.get("wrk", 0.0) + result.cpu_secs
            print(f"  clients={concurrency:<3} stream={stream!s:<5} done", flush=True)
            cells += by_mode.values()
    return cells


def measure(plan: Plan, before_rev: str, pin: bool, tmp: Path) -> dict[str, Any]:
    before_commit = export_tree(before_rev, tmp / "before-tree")
    with ExitStack() as stack:
        daemon, backend_pid = stack.enter_context(gpumux_daemon(tmp / "gpumux", plan))
        old, old_backend_pid = stack.enter_context(
            gpumux_daemon(tmp / "gpumux-before", plan, tmp / "before-tree" / "src")
        )
        backend_port = int(daemon.config["models"][MODEL]["port"])
        (tmp / "nginx").mkdir()
        (tmp / "litellm").mkdir()
        nginx_url, nginx_pid = stack.enter_context(nginx(backend_port, tmp / "nginx"))
        litellm_url, litellm_pid = stack.enter_context(litellm(backend_port, tmp / "litellm"))
        bases = {
            "direct": daemon.backend_url(MODEL),
            "gpumux-before": old.url,
            "gpumux": daemon.url,
            "nginx": nginx_url,
            "litellm": litellm_url,
        }
        urls = {mode: base + "/v1/chat/completions" for mode, base in bases.items()}
        conformance = asyncio.run(check_replies(urls, plan.max_tokens))
        placement = choose_placement(sorted(os.sched_getaffinity(0))) if pin else None
        if placement is not None:
            for proxy_pid in (daemon.process.pid, old.process.pid, nginx_pid, litellm_pid):
                pin_tree(proxy_pid, placement.proxies)
            for pid in (backend_pid, old_backend_pid):  # after their daemons: they are children
                pin_tree(pid, placement.backends)
            os.sched_setaffinity(0, placement.loadgen)
        pids = {
            "gpumux": daemon.process.pid,
            "gpumux-before": old.process.pid,
            "nginx": nginx_pid,
            "litellm": litellm_pid,
            "backend": backend_pid,
            "backend-before": old_backend_pid,
        }
        meter = TreeCpuMeter(
            {
                "gpumux": (daemon.process.pid, (backend_pid,)),
                "gpumux-before": (old.process.pid, (old_backend_pid,)),
                "nginx": (nginx_pid, ()),
                "litellm": (litellm_pid, ()),
                "backend": (backend_pid, ()),
                "backend-before": (old_backend_pid, ()),
            }
        )
        cells = run_cells(plan, urls, meter, placement.loadgen if placement else None, tmp)
    return {
        "before": {"rev": before_rev, "commit": before_commit},
        "placement": placement.as_dict() if placement else None,
        "processes": pids,
        "conformance": conformance,
        "cells": cells,
    }


def parse_args(argv: list[str] | None = None) -> tuple[Plan, str, str, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a ~2 minute smoke run")
    parser.add_argument("--rounds", type=int, help="rounds per (mode, clients, stream)")
    parser.add_argument("--round-secs", type=int, help="whole seconds per round")
    parser.add_argument("--concurrency", type=int, nargs="+", help="client counts to try")
    parser.add_argument("--before", default=BEFORE_REV, help="git rev run as gpumux-before")
    parser.add_argument("--no-pin", action="store_true", help="leave CPU placement alone")
    parser.add_argument("--name", help="results file stem (default compare[_quick])")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    overrides: dict[str, Any] = {
        "rounds": args.rounds,
        "round_secs": args.round_secs,
        "concurrencies": tuple(args.concurrency) if args.concurrency else None,
    }
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    if plan.rounds < 1 or plan.round_secs < 1 or any(c < 1 for c in plan.concurrencies):
        parser.error("rounds, round seconds and concurrencies must be positive")
    name = args.name or (NAME + "_quick" if args.quick else NAME)
    return plan, name, args.before, not args.no_pin


def main(argv: list[str] | None = None) -> int:
    plan, name, before_rev, pin = parse_args(argv)
    if not wrk.available():
        raise SystemExit(f"{wrk.WRK} is missing: run bench/setup-compare.sh first")
    env = environment()
    print(f"{NAME}: about {plan.budget_secs:.0f} s of load; results → bench/results/{name}.*")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpumux-compare-") as tmp_name:
        measured = measure(plan, before_rev, pin, Path(tmp_name))
    cells = [c.as_dict() for c in measured.pop("cells")]
    derived = derive(cells)
    payload: dict[str, Any] = {
        "bench": NAME,
        "environment": env,
        "versions": versions(),
        "plan": {
            **dataclasses.asdict(plan),
            "concurrencies": list(plan.concurrencies),
            "warmup_secs": WARMUP_SECS,
        },
        "wall_s": round(time.perf_counter() - started, 1),
        **measured,
        "cells": cells,
        "derived": derived,
        "targets": check_targets(derived),
    }
    markdown = render(payload)
    publish(name, payload, markdown)
    print(json.dumps({"wall_s": payload["wall_s"], "targets": payload["targets"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
