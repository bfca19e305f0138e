"""Side by side: gpumux's proxy against nginx and the LiteLLM proxy, same backend, one run.

One `mock_vllm` backend (started by gpumux's first request) is reached four ways:
directly, through gpumux, through nginx (Debian's, `proxy_buffering off` for SSE, upstream
keep-alive, one worker) and through the LiteLLM proxy (`litellm --config`, one worker,
the backend declared as an OpenAI-compatible `hosted_vllm/` model). For 1, 16 and 64
closed-loop clients, streaming and not, the load generator of `bench/proxy_overhead.py`
(reused, not copied) runs short rounds that rotate the order of the four modes, so drift
on this shared machine falls on all of them alike.

Reported per (mode, clients, stream): requests/s, latency p50/p99, TTFB for streams,
errors, and CPU ms per request of the proxy in front (its whole process tree). Derived:
latency each proxy adds over direct, and its throughput as a fraction of direct.

Needs `bench/setup-compare.sh` first (nginx, and LiteLLM in its own venv). Loopback only.
Run from the repository root: `.venv/bin/python -m bench.compare [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
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
from bench.proxy_overhead import Cell, new_session, run_phase
from tests.support.daemon import RunningDaemon, mock_model, running_daemon
from tests.support.ports import free_port

NAME = "compare"
MODEL = "m"
MODES = ("direct", "gpumux", "nginx", "litellm")
LITELLM_VENV = Path(os.environ.get("LITELLM_VENV", "/opt/gpumux-bench/litellm"))
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
READY_TIMEOUT_SECS = 90.0


@dataclass(frozen=True)
class Plan:
    """How much load to send; the defaults take about 4–5 minutes on 2 cores."""

    concurrencies: tuple[int, ...] = (1, 16, 64)
    rounds: int = 4  # per (mode, clients, stream); the mode order rotates every round
    round_secs: float = 1.5
    round_max_requests: int = 5000
    max_tokens: int = 16
    tokens_per_sec: float = 2000.0

    @property
    def budget_secs(self) -> float:
        return len(self.concurrencies) * 2 * len(MODES) * (self.rounds + 1) * self.round_secs


QUICK = Plan(rounds=2, round_secs=0.6, round_max_requests=1000)


# ---- the proxies in front --------------------------------------------------------------


def wait_http(url: str, timeout: float = READY_TIMEOUT_SECS) -> None:
    """Poll `url` until it answers 2xx, or raise after `timeout`."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 300:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready in {timeout:g}s ({last})")


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 32m;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


@contextmanager
def nginx(backend_port: int, tmp: Path) -> Iterator[tuple[str, int]]:
    """nginx in front of the backend; yields (base URL, pid of its worker)."""
    port = free_port()
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, backend=backend_port, port=port))
    log = (tmp / "nginx.out").open("wb")
    process = subprocess.Popen(
        [NGINX, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


LITELLM_CONF = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: hosted_vllm/{model}
      api_base: http://127.0.0.1:{backend}/v1
      api_key: unused
litellm_settings:
  drop_params: true
  telemetry: false
  num_retries: 0
  request_timeout: 600
general_settings:
  disable_spend_logs: true
"""


@contextmanager
def litellm(backend_port: int, tmp: Path) -> Iterator[tuple[str, int]]:
    """The LiteLLM proxy in front of the backend; yields (base URL, its pid)."""
    program = LITELLM_VENV / "bin" / "litellm"
    if not program.exists():
        raise SystemExit(f"{program} is missing: run bench/setup-compare.sh first")
    port = free_port()
    (tmp / "litellm.yaml").write_text(LITELLM_CONF.format(model=MODEL, backend=backend_port))
    env = {
        "PATH": f"{LITELLM_VENV / 'bin'}:{os.environ.get('PATH', '')}",
        "HOME": str(tmp),
        # Offline: the bundled model-cost map, no telemetry, no update checks.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "DISABLE_SCHEMA_UPDATE": "True",
    }
    log = (tmp / "litellm.out").open("wb")
    process = subprocess.Popen(
        [
            str(program),
            "--config",
            str(tmp / "litellm.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
            "--telemetry",
            "False",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/health/liveliness")
        except RuntimeError:
            log.flush()
            sys.stderr.write((tmp / "litellm.out").read_text(errors="replace")[-3000:])
            raise
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


# ---- measuring -----------------------------------------------------------------------------


class TreeCpuMeter:
    """CPU seconds (user + system) of named process trees (a root and its descendants)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._roots = {who: psutil.Process(pid) for who, pid in pids.items()}

    def read(self) -> dict[str, float]:
        readings = {}
        for who, root in self._roots.items():
            total = 0.0
            for proc in [root, *root.children(recursive=True)]:
                with suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
            readings[who] = total
        return readings


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
                    "ok": sample.ok,
                    "status": sample.status,
                    "completion_tokens": sample.completion_tokens,
                    "error": sample.error,
                }
    return notes


async def measure(
    daemon: RunningDaemon, plan: Plan, tmp: Path
) -> tuple[list[Cell], dict[str, Any], dict[str, Any]]:
    async with new_session(1) as probe:
        first = await timed_post(
            probe, daemon.url + "/v1/chat/completions", chat_body(MODEL, max_tokens=1, stream=False)
        )
        if not first.ok:
            raise SystemExit(f"gpumux could not serve {MODEL!r}: {first.error}")
        state = await get_json_async(probe, daemon.backend_url(MODEL) + "/mock/state")
    backend_pid = int(state["pid"])
    backend_port = int(daemon.config["models"][MODEL]["port"])
    with ExitStack() as stack:
        nginx_url, nginx_pid = stack.enter_context(nginx(backend_port, tmp / "nginx"))
        litellm_url, litellm_pid = stack.enter_context(litellm(backend_port, tmp / "litellm"))
        bases = {
            "direct": daemon.backend_url(MODEL),
            "gpumux": daemon.url,
            "nginx": nginx_url,
            "litellm": litellm_url,
        }
        urls = {mode: base + "/v1/chat/completions" for mode, base in bases.items()}
        conformance = await check_replies(urls, plan.max_tokens)
        pids = {
            "gpumux": daemon.process.pid,
            "nginx": nginx_pid,
            "litellm": litellm_pid,
            "backend": backend_pid,
            "client": os.getpid(),
        }
        meter = TreeCpuMeter(pids)
        cells: list[Cell] = []
        for concurrency in plan.concurrencies:
            sessions = {mode: new_session(concurrency) for mode in MODES}
            try:
                for stream in (False, True):
                    body = chat_body(MODEL, max_tokens=plan.max_tokens, stream=stream)
                    by_mode = {mode: Cell(mode, concurrency, stream) for mode in MODES}
                    for mode in MODES:  # warm-up: fill each pool (it stays warm), untimed
                        await run_phase(
                            sessions[mode],
                            urls[mode],
                            body,
                            concurrency,
                            max_requests=3 * concurrency,
                            duration_secs=plan.round_secs,
                        )
                    for round_no in range(plan.rounds):
                        shift = round_no % len(MODES)
                        for mode in MODES[shift:] + MODES[:shift]:
                            cell = by_mode[mode]
                            before = meter.read()
                            samples, elapsed = await run_phase(
                                sessions[mode],
                                urls[mode],
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
                    print(f"  clients={concurrency:<3} stream={stream!s:<5} done", flush=True)
                    cells += by_mode.values()
            finally:
                for session in sessions.values():
                    await session.close()
    return cells, pids, conformance


# ---- report --------------------------------------------------------------------------------


def proxy_cpu_ms(cell: Cell) -> float:
    """CPU per request of whatever stands in front of the backend (0 for direct)."""
    return cell.cpu_ms_per_request(cell.mode) if cell.mode != "direct" else 0.0


def derive(cells: list[Cell]) -> list[dict[str, Any]]:
    index = {(c.mode, c.concurrency, c.stream): c for c in cells}
    rows = []
    for cell in cells:
        if cell.mode == "direct":
            continue
        direct = index[("direct", cell.concurrency, cell.stream)]
        if not direct.ok or not cell.ok:
            continue
        d_total = summarize_ms([s.total for s in direct.ok])
        p_total = summarize_ms([s.total for s in cell.ok])
        d_ttfb = summarize_ms([s.ttfb for s in direct.ok])
        p_ttfb = summarize_ms([s.ttfb for s in cell.ok])
        rows.append(
            {
                "mode": cell.mode,
                "concurrency": cell.concurrency,
                "stream": cell.stream,
                "added_p50_ms": round(p_total.p50 - d_total.p50, 3),
                "added_p99_ms": round(p_total.p99 - d_total.p99, 3),
                "added_ttfb_p50_ms": round(p_ttfb.p50 - d_ttfb.p50, 3),
                "rps_ratio": round(ratio(cell.rps, direct.rps), 4),
                "proxy_cpu_ms_per_request": round(proxy_cpu_ms(cell), 3),
            }
        )
    return rows


def render(payload: dict[str, Any]) -> str:
    plan, env = payload["plan"], payload["environment"]
    lines = [
        "# gpumux vs nginx vs LiteLLM in front of the same mock backend",
        "",
        *environment_lines(env),
        f"- All processes share these {env['cpus_usable']} CPU(s); compare ratios, not absolutes.",
        f"- Backend: mock_vllm, ttft 0 ms, {plan['tokens_per_sec']:g} tokens/s, max_tokens "
        f"{plan['max_tokens']}; chat completions. nginx {payload['versions']['nginx']} "
        "(1 worker, `proxy_buffering off`, upstream keep-alive); LiteLLM "
        f"{payload['versions']['litellm']} (1 worker, `hosted_vllm/` model).",
        f"- {plan['rounds']} rounds of <= {plan['round_secs']:g} s per (mode, clients, stream), "
        "mode order rotating each round, after one untimed warm-up per mode.",
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
                fmt(cpu.get(c["mode"]), 3) if c["mode"] != "direct" else "–",
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
                "p50 (ms)",
                "p99 (ms)",
                "TTFB p50 (ms)",
                "proxy CPU (ms/req)",
            ],
            rows,
        )
    )
    lines += ["", "## Added over direct (proxy − direct; req/s as a fraction of direct)", ""]
    lines.append(
        markdown_table(
            [
                "clients",
                "stream",
                *(f"{m} +p50 / +p99 (ms)" for m in MODES[1:]),
                *(f"{m} req/s ratio" for m in MODES[1:]),
            ],
            [
                [
                    conc,
                    "yes" if stream else "no",
                    *(
                        f"{fmt(d['added_p50_ms'], 1)} / {fmt(d['added_p99_ms'], 1)}" if d else "–"
                        for d in (_find(payload["derived"], m, conc, stream) for m in MODES[1:])
                    ),
                    *(
                        fmt(d["rps_ratio"], 2) if d else "–"
                        for d in (_find(payload["derived"], m, conc, stream) for m in MODES[1:])
                    ),
                ]
                for conc in plan["concurrencies"]
                for stream in (False, True)
            ],
        )
    )
    bad = {k: v for k, v in payload["conformance"].items() if not v["ok"]}
    lines += [
        "",
        "Latency is the whole reply (for streams, until the last SSE byte); TTFB the first "
        "body byte. Proxy CPU is user+system time of the proxy's process tree during the "
        "timed rounds divided by requests sent (the kernel counts CPU in 10 ms ticks, so "
        "it is coarse where few requests were sent).",
        "",
        "Pre-flight (one request per mode and kind): "
        + ("all answered 200 with a completion." if not bad else f"failures: {bad}"),
    ]
    return "\n".join(lines)


def _find(
    derived: list[dict[str, Any]], mode: str, conc: int, stream: bool
) -> dict[str, Any] | None:
    return next(
        (
            d
            for d in derived
            if d["mode"] == mode and d["concurrency"] == conc and d["stream"] is stream
        ),
        None,
    )


def versions() -> dict[str, str]:
    found = {"nginx": "?", "litellm": "?"}
    with suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, timeout=10).stderr
        found["nginx"] = out.strip().rsplit("/", 1)[-1]
    with suppress(OSError, subprocess.SubprocessError):
        found["litellm"] = subprocess.run(
            [
                str(LITELLM_VENV / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
    return found


def parse_args(argv: list[str] | None = None) -> tuple[Plan, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    parser.add_argument("--rounds", type=int, help="rounds per (mode, clients, stream)")
    parser.add_argument("--round-secs", type=float, help="seconds per round")
    parser.add_argument("--concurrency", type=int, nargs="+", help="client counts to try")
    parser.add_argument("--name", help="results file stem (default compare[_quick])")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    overrides: dict[str, Any] = {
        "rounds": args.rounds,
        "round_secs": args.round_secs,
        "concurrencies": tuple(args.concurrency) if args.concurrency else None,
    }
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    if plan.rounds < 1 or plan.round_secs <= 0 or any(c < 1 for c in plan.concurrencies):
        parser.error("rounds, round seconds and concurrencies must be positive")
    return plan, args.name or (NAME + "_quick" if args.quick else NAME)


def main(argv: list[str] | None = None) -> int:
    plan, name = parse_args(argv)
    env = environment()
    backend_args = mock_args(
        ttft_ms=0, tokens_per_sec=plan.tokens_per_sec, startup_secs=0, keepalive_timeout_secs=60
    )
    models = {MODEL: mock_model(extra_args=[*backend_args, "--disable-uvicorn-access-log"])}
    print(f"{NAME}: about {plan.budget_secs:.0f} s of load; results → bench/results/{name}.*")
    with (
        tempfile.TemporaryDirectory(prefix="gpumux-compare-") as tmp_name,
        running_daemon(Path(tmp_name) / "gpumux", models) as daemon,
    ):
        tmp = Path(tmp_name)
        for sub in ("nginx", "litellm"):
            (tmp / sub).mkdir()
        started = time.perf_counter()
        cells, pids, conformance = asyncio.run(measure(daemon, plan, tmp))
        wall = time.perf_counter() - started
    payload: dict[str, Any] = {
        "bench": NAME,
        "environment": env,
        "versions": versions(),
        "plan": {**plan.__dict__, "concurrencies": list(plan.concurrencies)},
        "wall_s": round(wall, 1),
        "processes": pids,
        "conformance": conformance,
        "cells": [c.as_dict() for c in cells],
        "derived": derive(cells),
    }
    markdown = render(payload)
    publish(name, payload, markdown)
    print(json.dumps({"wall_s": payload["wall_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
