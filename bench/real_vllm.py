"""Cold start vs CRIU restore of a real vLLM (CPU build) through gpumux, side by side.

What a user waits for: the time from sending the first request for a model that is not
running to the first generated token, through gpumux's proxy. Each sample is a fresh
daemon whose model `a` (a tiny Llama, `scripts/make_tiny_model.py`, dummy weights) is
not running, and one streaming completion, timed from the send to the first SSE frame
that carries text:

- cold start: `a` is stopped; gpumux runs `vllm serve` and waits for `/health`;
- CRIU restore: `a` names a pre-baked image (`gpumux serve --checkpoint a --eviction
  retain+checkpoint`, made once per run) in `checkpoint_path`; gpumux restores it;
- running: the same request again once `a` runs (the baseline every ratio refers to).

Cold and restore samples alternate (cold, restore, cold, ...) so that drift in the
machine's load hits both. All daemons share one state directory (an image holds the
backend's log file by path). gpumux's own `switch_finished` events (with the `start` or
`restore` phase) are kept in the JSON.

Needs the environment from `scripts/setup-real-vllm.sh` (`GPUMUX_REAL_VLLM`, `--vllm`,
or the `vllm-path` file in `${GPUMUX_REAL_VLLM_HOME:-/opt/gpumux-real-vllm}`); the restore
path also needs root, `criu` >= 4.2 and `kernel.io_uring_disabled=2` (scripts/test sets
both up). Without them the report says why and gives the cold path alone.

Run from the repository root: `.venv/bin/python -m bench.real_vllm [--rounds N] [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import restore_timeline
from bench.common import (
    environment,
    environment_lines,
    fmt,
    markdown_table,
    publish,
    ratio,
    summarize,
)
from tests.support.cpu_vllm import (
    CPU_FLAGS,
    ENV_VAR,
    STARTUP_TIMEOUT_SECS,
    RealVllm,
    vllm_model,
    vllm_overrides,
)
from tests.support.criu import run_prebake
from tests.support.daemon import daemon_config, running_daemon

NAME = "real_vllm"
#: A cold start is ~18-30 s on 2 cores (more under load); one request waits at most this.
REQUEST_TIMEOUT_SECS = STARTUP_TIMEOUT_SECS + 60.0
PREBAKE_TIMEOUT_SECS = STARTUP_TIMEOUT_SECS + 180
MAX_TOKENS = 8
PROMPT = "The quick brown fox"
CHECKPOINT = {"weights": "retain", "process": "checkpoint"}
IO_URING_KNOB = Path("/proc/sys/kernel/io_uring_disabled")


@dataclass(frozen=True)
class Timing:
    """One request as the client saw it, in seconds from just before the send."""

    first_token: float
    total: float
    text: str
    #: `time.time()` just before the send (lines the request up with gpumux's log).
    sent_at: float = 0.0


@dataclass
class Route:
    """The samples of one way of bringing `a` to its first token."""

    name: str
    description: str
    samples: list[Timing] = field(default_factory=list)
    switches: list[dict[str, Any]] = field(default_factory=list)
    #: Per sample: the restore's phases from send to first token (`restore_timeline`).
    timelines: list[dict[str, float]] = field(default_factory=list)
    #: Per sample: the fraction of the image in the page cache just before the request.
    resident: list[float | None] = field(default_factory=list)

    def first_tokens(self) -> list[float]:
        return [s.first_token for s in self.samples]


async def first_token(url: str) -> Timing:
    """Stream one completion of `a`; time the first frame with text and the end."""
    body = {
        "model": "a",
        "prompt": PROMPT,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": True,
    }
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECS)
    text: list[str] = []
    first: float | None = None
    async with aiohttp.ClientSession(timeout=timeout) as session:
        sent_at = time.time()
        started = time.perf_counter()
        async with session.post(url + "/v1/completions", json=body) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data:") or line == b"data: [DONE]":
                    continue
                frame = json.loads(line[len(b"data:") :])
                if "error" in frame:
                    raise RuntimeError(f"the stream failed: {frame['error']}")
                pieces = [c.get("text") or "" for c in frame.get("choices", [])]
                if first is None and any(pieces):
                    first = time.perf_counter() - started
                text += pieces
        total = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the stream carried no text")
    return Timing(first, total, "".join(text), sent_at)


def one_daemon(
    tmp: Path,
    config: dict[str, Any],
    name: str,
    route: Route,
    running: Route,
    image: Path | None = None,
) -> None:
    """A fresh daemon: the first request (sampled into `route`), then one more (`running`).

    With `image` (the restore path), also how much of it was cached before the request
    and the restore's timeline from gpumux's log."""
    with running_daemon(
        tmp / name,
        config["models"],
        **{k: v for k, v in config.items() if k != "models"},
    ) as daemon:
        if image is not None:
            route.resident.append(restore_timeline.resident_fraction(image))
        timing = asyncio.run(first_token(daemon.url))
        route.samples.append(timing)
        running.samples.append(asyncio.run(first_token(daemon.url)))
        events = daemon.log_events()
        route.switches += [
            e for e in events if e.get("event") in ("switch_finished", "criu_restored")
        ]
        timelines = [e for e in events if e.get("event") == "criu_restore_timeline"]
        finished = [e for e in events if e.get("event") == "switch_finished"]
        if image is not None and timelines:
            ready_at = restore_timeline.logged_at(finished[0]) if finished else None
            route.timelines.append(
                restore_timeline.sample(timing.sent_at, timing.first_token, timelines[0], ready_at)
            )


def criu_problem() -> str | None:
    """Why the restore path cannot run here, or None."""
    if os.geteuid() != 0:
        return "CRIU needs root"
    if shutil.which("criu") is None:
        return "criu is not installed (scripts/test installs CRIU >= 4.2)"
    if IO_URING_KNOB.exists() and IO_URING_KNOB.read_text().strip() != "2":
        return "kernel.io_uring_disabled is not 2 (uvloop's io_uring cannot be dumped)"
    return None


def prebake(tmp: Path, config: dict[str, Any]) -> tuple[Path, float]:
    """`gpumux serve --checkpoint a`: the image's path and how long the pre-bake took."""
    baked = run_prebake(
        tmp,
        config,
        *("--eviction", "retain+checkpoint", "--log-format", "json"),
        timeout=PREBAKE_TIMEOUT_SECS,
    )
    if baked.result.returncode != 0 or baked.image is None:
        raise RuntimeError(
            f"pre-bake failed ({baked.result.returncode}): {baked.result.stderr[-2000:]}"
        )
    return baked.image, baked.seconds


def find_vllm(given: str | None) -> RealVllm:
    """The prepared vLLM: `--vllm`, else $GPUMUX_REAL_VLLM, else the setup's vllm-path file."""
    value = given or os.environ.get(ENV_VAR)
    if not value:
        home = Path(os.environ.get("GPUMUX_REAL_VLLM_HOME", "/opt/gpumux-real-vllm"))
        path_file = home / "vllm-path"
        if path_file.is_file():
            value = path_file.read_text().strip()
    if not value or not os.access(value, os.X_OK):
        raise SystemExit(
            f"bench/real_vllm.py: no prepared vLLM ({ENV_VAR}={value or ''!r}); "
            "run scripts/setup-real-vllm.sh first"
        )
    return RealVllm(Path(value))


def phase_seconds(route: Route, phase: str) -> list[float]:
    """gpumux's own duration of `phase` in the route's first switches; `criu` is the
    `criu restore` run alone (the rest of the restore phase is gpumux's checks and copies).
    """
    if phase == "criu":
        return [float(e["secs"]) for e in route.switches if e.get("event") == "criu_restored"]
    return [
        float(e["phases"][phase])
        for e in route.switches
        if e.get("event") == "switch_finished" and phase in e.get("phases", {})
    ]


def route_row(route: Route, base: float, cold: float | None) -> list[object]:
    s = summarize(route.first_tokens())
    return [
        route.name,
        s.n,
        fmt(s.p50, 3),
        fmt(s.p99, 3),
        fmt(s.mean, 3),
        fmt(ratio(s.p50, base), 1) + "×",
        fmt(ratio(cold, s.p50), 1) + "×" if cold is not None else "–",
        route.description,
    ]


def report(
    routes: list[Route], running: Route, restore_note: str | None, rounds: int, prebake_s: float
) -> tuple[dict[str, Any], str]:
    """The JSON payload and the Markdown report."""
    env = environment()
    base = summarize(running.first_tokens()).p50
    cold = summarize(routes[0].first_tokens()).p50
    texts = {s.text for r in (*routes, running) for s in r.samples}
    payload: dict[str, Any] = {
        "name": NAME,
        "environment": env,
        "setup": {
            "model": "tiny Llama, 2 layers (scripts/make_tiny_model.py), dummy weights",
            "vllm_flags": list(CPU_FLAGS),
            "rounds": rounds,
            "max_tokens": MAX_TOKENS,
            "prebake_s": round(prebake_s, 3) if prebake_s else None,
        },
        "same_text_everywhere": len(texts) == 1,
        "restore_note": restore_note,
        "routes": [],
    }
    rows = []
    for route in (*routes, running):
        s = summarize(route.first_tokens())
        payload["routes"].append(
            {
                "name": route.name,
                "description": route.description,
                "first_token_s": s.as_dict(4),
                "ratio_to_running_p50": round(ratio(s.p50, base), 2),
                "cold_over_this_p50": round(ratio(cold, s.p50), 2),
                "gpumux_phase_s": {
                    phase: [round(x, 4) for x in phase_seconds(route, phase)]
                    for phase in ("start", "restore", "criu")
                    if phase_seconds(route, phase)
                },
                "samples": [
                    {"first_token_s": round(t.first_token, 4), "total_s": round(t.total, 4)}
                    for t in route.samples
                ],
            }
        )
        if route.timelines:
            payload["routes"][-1]["restore_timeline_s"] = [
                {phase: round(secs, 4) for phase, secs in one.items()} for one in route.timelines
            ]
            payload["routes"][-1]["image_resident_before"] = [
                round(r, 3) if r is not None else None for r in route.resident
            ]
        rows.append(route_row(route, base, cold))
    lines = [
        "# Cold start vs CRIU restore of a real vLLM (CPU build) through gpumux",
        "",
        *environment_lines(env),
        f"- vLLM flags: `{' '.join(CPU_FLAGS)}`; {rounds} fresh daemon(s) per path, "
        f"alternating; first streaming completion ({MAX_TOKENS} tokens, temperature 0) "
        "timed from the send to the first token",
        f"- same greedy text from every path: {payload['same_text_everywhere']}",
        "",
        markdown_table(
            ["path", "n", "p50 s", "p99 s", "mean s", "p50 vs running", "cold p50 / p50", "what"],
            rows,
        ),
    ]
    phases = []
    for route in routes:
        for phase, what in (("start", "start"), ("restore", "restore"), ("criu", "`criu restore`")):
            values = phase_seconds(route, phase)
            if values:
                phases.append(f"{what} p50 {summarize(values).p50:.3f} s")
    if phases:
        lines += [
            "",
            "gpumux's own phases (its `switch_finished` log events): " + "; ".join(phases),
        ]
    for route in routes:
        if route.timelines:
            cached = [r for r in route.resident if r is not None]
            shares = ", ".join(f"{100 * r:.0f} %" for r in cached)
            where = f"; image in the page cache before each: {shares}"
            lines += [
                "",
                f"Where {route.name}-to-first-token goes ({len(route.timelines)} samples, "
                "gpumux's `criu_restore_timeline` lined up with the client's clock"
                f"{where if cached else ''}):",
                "",
                restore_timeline.table(route.timelines),
            ]
    if prebake_s:
        lines += ["", f"Pre-baking the image (once, off the request path) took {prebake_s:.1f} s."]
    if restore_note:
        lines += ["", f"CRIU restore not measured: {restore_note}."]
    return payload, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3, help="daemons per path (default 3)")
    parser.add_argument("--quick", action="store_true", help="one daemon per path")
    parser.add_argument("--vllm", help="the vllm binary (default: $GPUMUX_REAL_VLLM)")
    parser.add_argument("--name", default=NAME, help="results file name (default real_vllm)")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    if rounds < 1:
        parser.error("--rounds must be at least 1")
    real = find_vllm(args.vllm)
    cold = Route("cold start", "`vllm serve` until /health, then the first token")
    restore = Route("CRIU restore", "`criu restore` of the pre-baked tree, then the first token")
    running = Route("running", "the model already runs: forward, first token")
    note = criu_problem()
    prebake_s = 0.0
    with tempfile.TemporaryDirectory(prefix="gpumux-bench-real-vllm-") as tmp_name:
        tmp = Path(tmp_name)
        models = {"a": vllm_model(real, tmp / "a-tmp", "tiny-a", eviction=CHECKPOINT)}
        top = vllm_overrides(
            real, checkpoint={"images_dir": str(tmp / "images"), "cuda_plugin_dir": None}
        )
        config = daemon_config(tmp, models, **top)
        image: Path | None = None
        if note is None:
            try:
                image, prebake_s = prebake(tmp, config)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                note = str(exc)
        restored = json.loads(json.dumps(config))
        if image is not None:
            restored["models"]["a"]["checkpoint_path"] = str(image)
        for i in range(rounds):
            one_daemon(tmp, config, f"cold{i}", cold, running)
            if image is not None:
                one_daemon(tmp, restored, f"restore{i}", restore, running, image)
        if image is not None:
            # A kill-mode dump leaves the tree's /dev/shm segments behind (copies travel
            # with the image); remove the pre-bake's so the run leaves nothing.
            shm = json.loads((image / "manifest.json").read_text()).get("shm_files", [])
            for name in shm:
                Path(name).unlink(missing_ok=True)
    routes = [cold, restore] if restore.samples else [cold]
    payload, markdown = report(routes, running, note, rounds, prebake_s)
    publish(args.name, payload, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
