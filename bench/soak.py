"""Soak: mixed traffic, client disconnects and backend crashes against one real daemon.

gpumux runs 4 `mock_vllm` models on 2 fake 80 GiB GPUs (two models per GPU, each
reserving 0.6 of it, so the two on a GPU must take turns). For a bounded time
(`--minutes`, default 10; `--quick` ≈ 60 s) closed-loop clients send chat completions,
streaming and not, to random models; a few of them hang up mid-reply on purpose; and a
crash injector SIGKILLs a random live backend (its whole process group, or only the API
server) every few seconds. Nothing is retried by the clients.

Every request must end in a success or a clean OpenAI-shaped error. Counted as *lost*
(the number that must be 0): a connection reset or refused, a timeout, a malformed reply
(an error that is not `{"error": {message, type, param, code}}` JSON, a 200 body that is
not a completion), and a stream that ends without `data: [DONE]`.

Also reported: outcomes by kind, switches and restarts (from gpumux's own metrics),
the daemon's RSS and open file descriptors over the run (psutil; the first sample is
taken after a warm-up), the highest fake-GPU booking per GPU (never above capacity), and
processes left after the daemon's SIGTERM (must be 0).

Run from the repository root: `.venv/bin/python -m bench.soak [--quick | --minutes N]`.
Writes `bench/results/soak.{json,md}` (`soak_quick.*` with `--quick`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from bench.common import (
    chat_body,
    environment,
    environment_lines,
    fmt,
    markdown_table,
    mock_args,
    publish,
)
from tests.support.daemon import RunningDaemon, daemon_config, mock_model, start_daemon

NAME = "soak"
GIB = 1024**3
CAPACITY_GIB = 80
MODELS_PER_GPU = 2
GPUS = 2
#: Per-request client deadline; a request still unanswered then is lost.
CLIENT_TIMEOUT_SECS = 120.0
#: How often the daemon's RSS/fds, its descendants and the GPU ledger are sampled.
SAMPLE_SECS = 1.0
STOP_TIMEOUT_SECS = 60.0


@dataclass(frozen=True)
class Plan:
    """What one soak run does; every count and duration is bounded."""

    seconds: float = 600.0
    clients: int = 8
    stream_fraction: float = 0.5
    disconnect_fraction: float = 0.05
    crash_every_secs: tuple[float, float] = (6.0, 15.0)
    max_tokens: tuple[int, int] = (1, 48)
    think_secs: tuple[float, float] = (0.0, 0.2)
    warmup_fraction: float = 0.1
    seed: int = 1


@dataclass
class Tally:
    """Everything the clients and the crash injector saw."""

    outcomes: Counter[str] = field(default_factory=Counter)
    lost: list[dict[str, Any]] = field(default_factory=list)
    crashes: Counter[str] = field(default_factory=Counter)
    by_model: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())

    def lose(self, kind: str, detail: str, model: str, stream: bool) -> None:
        self.outcomes["lost: " + kind] += 1
        if len(self.lost) < 20:
            self.lost.append(
                {"kind": kind, "detail": detail[:300], "model": model, "stream": stream}
            )


# ---- the daemon under test -------------------------------------------------------------


def soak_models() -> dict[str, dict[str, Any]]:
    """Two models per GPU at 0.6 each: the pair on a GPU must take turns."""
    backend = [
        "--gpu-memory-utilization", "0.6",
        *mock_args(model_gib=5, tokens_per_sec=400, ttft_ms=5),
        "--disable-uvicorn-access-log",
    ]  # fmt: skip
    models = {}
    for gpu in range(GPUS):
        for slot in range(MODELS_PER_GPU):
            entry = mock_model(extra_args=backend, gpus=[gpu])
            # mock_model sets its own utilisation and size first; ours come last and win.
            models[f"m{gpu}{slot}"] = entry
    return models


def soak_config(tmp: Path) -> dict[str, Any]:
    return daemon_config(
        tmp,
        soak_models(),
        gpu={
            "probe": "fake",
            "fake_capacity_gib": [CAPACITY_GIB] * GPUS,
            "sleeping_residual_gib": 0.5,
        },
        policy={"min_active_secs": 0.5, "request_timeout_secs": 60, "drain_timeout_secs": 10},
        supervision={
            "stop_grace_secs": 3,
            "restart_backoff_secs": 0.2,
            "restart_backoff_max_secs": 2,
            "max_start_failures": 5,
            "failed_retry_secs": 3,
            "shutdown_timeout_secs": 20,
            "health_interval_secs": 2,
        },
    )


# ---- clients -----------------------------------------------------------------------------


def classify_json_error(status: int, raw: bytes) -> str | None:
    """`"http <status> <code>"` for an OpenAI-shaped error body, else None (malformed)."""
    try:
        error = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= set(error):
        return None
    return f"http {status} {error['code']}"


def classify_stream(raw: bytes) -> tuple[str, str | None]:
    """(outcome, lost reason) of a complete 200 SSE body."""
    if not raw.endswith(b"data: [DONE]\n\n"):
        return "lost", "stream ended without [DONE]"
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {") and b'"error"' in line:
            try:
                error = json.loads(line[6:])["error"]
            except (ValueError, KeyError):
                return "lost", "malformed error event"
            return f"stream error event {error.get('code')}", None
    if b'"choices"' not in raw:
        return "lost", "stream without a completion chunk"
    return "ok stream", None


def classify_whole(raw: bytes) -> tuple[str, str | None]:
    try:
        body = json.loads(raw)
    except ValueError:
        return "lost", "200 body is not JSON"
    if not isinstance(body, dict) or not body.get("choices"):
        return "lost", "200 body has no choices"
    return "ok", None


async def one_request(
    session: aiohttp.ClientSession,
    url: str,
    model: str,
    stream: bool,
    max_tokens: int,
    hang_up_after: float | None,
    tally: Tally,
) -> None:
    body = chat_body(model, max_tokens=max_tokens, stream=stream, prompt=f"soak {random.random()}")
    tally.by_model[model] += 1
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT_SECS):
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as response:
                if hang_up_after is not None:
                    # Read a little (or nothing), then leave: the connection is closed.
                    await asyncio.sleep(hang_up_after)
                    response.close()
                    tally.outcomes["client hung up"] += 1
                    return
                raw = await response.read()
                status = response.status
    except TimeoutError:
        tally.lose("timeout", f"no complete reply in {CLIENT_TIMEOUT_SECS:g}s", model, stream)
        return
    except aiohttp.ClientError as exc:
        tally.lose("connection", f"{type(exc).__name__}: {exc}", model, stream)
        return
    if status != 200:
        kind = classify_json_error(status, raw)
        if kind is None:
            tally.lose("malformed error", f"{status} {raw[:200]!r}", model, stream)
        else:
            tally.outcomes[kind] += 1
        return
    outcome, reason = classify_stream(raw) if stream else classify_whole(raw)
    if reason is not None:
        tally.lose(reason, raw[-200:].decode(errors="replace"), model, stream)
    else:
        tally.outcomes[outcome] += 1


async def client_loop(
    url: str, models: list[str], plan: Plan, rng: random.Random, deadline: float, tally: Tally
) -> None:
    connector = aiohttp.TCPConnector(limit=1, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        while time.monotonic() < deadline:
            stream = rng.random() < plan.stream_fraction
            hang_up = rng.uniform(0.0, 0.3) if rng.random() < plan.disconnect_fraction else None
            await one_request(
                session,
                url,
                rng.choice(models),
                stream,
                rng.randint(*plan.max_tokens),
                hang_up,
                tally,
            )
            await asyncio.sleep(rng.uniform(*plan.think_secs))


# ---- faults --------------------------------------------------------------------------------


async def backend_pid(session: aiohttp.ClientSession, port: int) -> int | None:
    try:
        async with session.get(
            f"http://127.0.0.1:{port}/mock/state", timeout=aiohttp.ClientTimeout(total=1)
        ) as response:
            state = await response.json()
            return int(state["pid"])
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
        return None


async def crash_injector(
    daemon: RunningDaemon, plan: Plan, rng: random.Random, deadline: float, tally: Tally
) -> None:
    """SIGKILL a random live backend (its group, or only its API server) every few seconds."""
    ports = {alias: m["port"] for alias, m in daemon.config["models"].items()}
    async with aiohttp.ClientSession() as session:
        while True:
            await asyncio.sleep(rng.uniform(*plan.crash_every_secs))
            if time.monotonic() >= deadline:
                return
            live = [
                (alias, pid)
                for alias, port in ports.items()
                if (pid := await backend_pid(session, port)) is not None
            ]
            if not live:
                continue
            alias, pid = rng.choice(live)
            whole_group = rng.random() < 0.5
            try:
                if whole_group:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            tally.crashes["process group" if whole_group else "API server only"] += 1
            print(f"  crash: SIGKILL {alias} pid {pid} ({'group' if whole_group else 'root'})")


# ---- observation ---------------------------------------------------------------------------


@dataclass
class ProcessSample:
    t: float
    rss_mib: float
    fds: int


class Watcher:
    """Samples the daemon (RSS, fds), its descendants and the GPU ledger in a thread."""

    def __init__(self, daemon: RunningDaemon) -> None:
        self._daemon = daemon
        self._proc = psutil.Process(daemon.process.pid)
        self._stop = threading.Event()
        self._started = time.monotonic()
        self.samples: list[ProcessSample] = []
        self.seen: dict[int, float] = {}  # pid -> create_time, every descendant ever seen
        self.ledger_peak: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="soak-watcher", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_SECS)

    def sample(self) -> None:
        try:
            rss = self._proc.memory_info().rss / 2**20
            fds = self._proc.num_fds()
            children = self._proc.children(recursive=True)
        except psutil.Error:
            return
        self.samples.append(ProcessSample(round(time.monotonic() - self._started, 1), rss, fds))
        for child in children:
            try:
                self.seen.setdefault(child.pid, child.create_time())
            except psutil.Error:
                continue
        try:
            ledger = json.loads(self._daemon.ledger_path.read_text())
        except (OSError, ValueError):
            return
        used: Counter[str] = Counter()
        for booking in ledger.get("allocations", {}).values():
            for gpu, amount in booking.get("gpus", {}).items():
                used[gpu] += int(amount)
        for gpu, amount in used.items():
            self.ledger_peak[gpu] = max(self.ledger_peak.get(gpu, 0), amount)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def survivors(self) -> list[int]:
        """Descendants seen during the run that still exist (same pid and start time)."""
        left = []
        for pid, created in self.seen.items():
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.Error:
                continue
        return left


def scrape(daemon: RunningDaemon) -> dict[str, dict[str, float]]:
    """gpumux's metrics as {name: {label string: value}} (only the `gpumux_` series)."""
    import urllib.request

    url = f"http://127.0.0.1:{daemon.config['metrics_port']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    series: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.startswith("gpumux_"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        series.setdefault(name, {})[labels.rstrip("}")] = float(value)
    return series


def label_sum(series: dict[str, float], **wanted: str) -> float:
    return sum(
        v for labels, v in series.items() if all(f'{k}="{x}"' in labels for k, x in wanted.items())
    )


def by_label(series: dict[str, float], label: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for labels, value in series.items():
        for part in labels.split(","):
            key, _, raw = part.partition("=")
            if key == label:
                found[raw.strip('"')] = found.get(raw.strip('"'), 0.0) + value
    return {k: v for k, v in found.items() if v}


# ---- the run ---------------------------------------------------------------------------------


async def drive(daemon: RunningDaemon, plan: Plan, watcher: Watcher) -> tuple[Tally, float]:
    rng = random.Random(plan.seed)
    tally = Tally()
    url = daemon.url + "/v1/chat/completions"
    models = sorted(daemon.config["models"])
    started = time.monotonic()
    deadline = started + plan.seconds
    warm = started + plan.seconds * plan.warmup_fraction

    async def mark_warm() -> None:
        await asyncio.sleep(max(0.0, warm - time.monotonic()))
        watcher.samples.clear()  # RSS/fds "at start" means after the warm-up
        watcher.sample()

    async def progress() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(min(30.0, max(1.0, plan.seconds / 10)))
            print(
                f"  t={time.monotonic() - started:5.0f}s requests={tally.requests} "
                f"lost={sum(v for k, v in tally.outcomes.items() if k.startswith('lost'))} "
                f"crashes={sum(tally.crashes.values())}",
                flush=True,
            )

    async with asyncio.TaskGroup() as tasks:
        for i in range(plan.clients):
            client_rng = random.Random(plan.seed * 1000 + i)
            tasks.create_task(client_loop(url, models, plan, client_rng, deadline, tally))
        tasks.create_task(crash_injector(daemon, plan, rng, deadline, tally))
        tasks.create_task(mark_warm())
        tasks.create_task(progress())
    return tally, time.monotonic() - started


def run(plan: Plan) -> dict[str, Any]:
    env = environment()
    with tempfile.TemporaryDirectory(prefix="gpumux-soak-") as tmp:
        config = soak_config(Path(tmp))
        daemon = start_daemon(Path(tmp), config)
        watcher: Watcher | None = None
        try:
            daemon.wait_ready()
            watcher = Watcher(daemon)
            watcher.start()
            tally, elapsed = asyncio.run(drive(daemon, plan, watcher))
            time.sleep(SAMPLE_SECS)
            watcher.sample()
            metrics = scrape(daemon)
        finally:
            exit_code = daemon.stop(signal.SIGTERM, timeout=STOP_TIMEOUT_SECS)
            if watcher is not None:
                watcher.stop()
        assert watcher is not None
        time.sleep(1.0)  # let the kernel finish tearing down what gpumux killed last
        survivors = watcher.survivors()
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    samples = watcher.samples
    first, last = samples[0], samples[-1]
    lost = sum(v for k, v in tally.outcomes.items() if k.startswith("lost"))
    switches = metrics.get("gpumux_switches_total", {})
    restarts = metrics.get("gpumux_backend_restarts_total", {})
    rss_growth = last.rss_mib - first.rss_mib
    return {
        "bench": NAME,
        "environment": env,
        "plan": {**asdict(plan), "models": sorted(config["models"]), "gpus": GPUS},
        "elapsed_s": round(elapsed, 1),
        "requests": tally.requests,
        "requests_per_model": dict(sorted(tally.by_model.items())),
        "outcomes": dict(tally.outcomes.most_common()),
        "lost": lost,
        "lost_examples": tally.lost,
        "crashes_injected": dict(tally.crashes),
        "switches": {
            "total": sum(switches.values()),
            "by_outcome": by_label(switches, "outcome"),
        },
        "restarts_by_reason": by_label(restarts, "reason"),
        "daemon": {
            "rss_mib_start": round(first.rss_mib, 1),
            "rss_mib_end": round(last.rss_mib, 1),
            "rss_mib_max": round(max(s.rss_mib for s in samples), 1),
            "rss_mib_growth": round(rss_growth, 1),
            "fds_start": first.fds,
            "fds_end": last.fds,
            "fds_max": max(s.fds for s in samples),
            "exit_code": exit_code,
            "samples": [
                [s.t, round(s.rss_mib, 1), s.fds] for s in samples[:: max(1, len(samples) // 60)]
            ],
        },
        "ledger_peak_gib": {
            gpu: round(v / GIB, 2) for gpu, v in sorted(watcher.ledger_peak.items())
        },
        "capacity_gib": CAPACITY_GIB,
        "descendants_seen": len(watcher.seen),
        "orphans_after_stop": len(survivors),
        "verdict": {
            "no_lost_requests": lost == 0,
            "no_orphans": not survivors,
            "clean_exit": exit_code == 0,
            "never_over_capacity": all(
                v <= CAPACITY_GIB * GIB for v in watcher.ledger_peak.values()
            ),
            # Flat within noise: a few MiB of allocator and metrics growth, not a leak.
            "rss_flat": rss_growth <= max(10.0, 0.1 * first.rss_mib),
            "fds_flat": last.fds <= first.fds + 8,
        },
    }


def render(payload: dict[str, Any]) -> str:
    plan, daemon = payload["plan"], payload["daemon"]
    lines = [
        f"# Soak: {payload['elapsed_s']:.0f} s of mixed traffic, disconnects and backend crashes",
        "",
        *environment_lines(payload["environment"]),
        f"- {len(plan['models'])} mock models on {plan['gpus']} fake {payload['capacity_gib']} GiB "
        "GPUs (two per GPU at 0.6 each, so they take turns); "
        f"{plan['clients']} closed-loop clients, {plan['stream_fraction']:.0%} streaming, "
        f"{plan['disconnect_fraction']:.0%} hang up mid-reply; a backend SIGKILLed every "
        f"{plan['crash_every_secs'][0]:g}–{plan['crash_every_secs'][1]:g} s; seed {plan['seed']}.",
        "- Lost = connection reset/refused, timeout, malformed reply, or a stream without "
        "`[DONE]`. Clean errors (OpenAI-shaped JSON, or an error event then `[DONE]`) "
        "are not lost.",
        "",
        "## Verdict",
        "",
    ]
    lines += [
        f"- {k.replace('_', ' ')}: {'yes' if v else 'NO'}" for k, v in payload["verdict"].items()
    ]
    lines += ["", "## Requests", ""]
    lines.append(
        markdown_table(
            ["outcome", "requests", "share"],
            [
                [kind, n, f"{n / max(1, payload['requests']):.1%}"]
                for kind, n in payload["outcomes"].items()
            ]
            + [["**total**", payload["requests"], "100%"]],
        )
    )
    lines += ["", "## Faults, switches, restarts", ""]
    crash_rows = [[f"crash injected: {k}", v] for k, v in payload["crashes_injected"].items()]
    switch_rows = [
        [f"switches: {k}", fmt(v, 0)] for k, v in payload["switches"]["by_outcome"].items()
    ]
    restart_rows = [[f"restarts: {k}", fmt(v, 0)] for k, v in payload["restarts_by_reason"].items()]
    lines.append(
        markdown_table(
            ["what", "count"],
            [
                *crash_rows,
                ["switches (total)", fmt(payload["switches"]["total"], 0)],
                *switch_rows,
                *restart_rows,
            ],
        )
    )
    lines += ["", "## The daemon over the run", ""]
    lines.append(
        markdown_table(
            ["", "after warm-up", "end", "max"],
            [
                [
                    "RSS (MiB)",
                    fmt(daemon["rss_mib_start"], 1),
                    fmt(daemon["rss_mib_end"], 1),
                    fmt(daemon["rss_mib_max"], 1),
                ],
                ["open fds", daemon["fds_start"], daemon["fds_end"], daemon["fds_max"]],
            ],
        )
    )
    peak = ", ".join(f"GPU {g}: {v:g} GiB" for g, v in payload["ledger_peak_gib"].items())
    lines += [
        "",
        f"- Highest fake-GPU booking: {peak} (capacity {payload['capacity_gib']} GiB each).",
        f"- Backend processes seen: {payload['descendants_seen']}; left after SIGTERM: "
        f"{payload['orphans_after_stop']}; daemon exit code {daemon['exit_code']}.",
    ]
    if payload["lost_examples"]:
        lines += ["", "## Lost requests (first 20)", ""]
        lines += [
            f"- {e['kind']} ({e['model']}, stream={e['stream']}): `{e['detail']}`"
            for e in payload["lost_examples"]
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[Plan, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0, help="run length (default 10)")
    parser.add_argument("--quick", action="store_true", help="a ~60 s run")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--name", help="results file stem (default soak[_quick])")
    args = parser.parse_args(argv)
    seconds = 60.0 if args.quick else args.minutes * 60
    if not 0 < seconds <= 6 * 3600:
        parser.error("the run must last between 0 and 6 hours")
    if not 1 <= args.clients <= 256:
        parser.error("--clients must be within 1..256")
    plan = Plan(seconds=seconds, clients=args.clients, seed=args.seed)
    return plan, args.name or (NAME + "_quick" if args.quick else NAME)


def main(argv: list[str] | None = None) -> int:
    plan, name = parse_args(argv)
    print(f"{NAME}: {plan.seconds:.0f} s, {plan.clients} clients; results → bench/results/{name}.*")
    payload = run(plan)
    markdown = render(payload)
    publish(name, payload, markdown)
    return 0 if all(payload["verdict"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
