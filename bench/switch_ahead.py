"""Request for a cold model → its first token, with and without overlap and eviction ahead of need.

Through the real daemon, with `mock_vllm` backends sized and paced after the H200 VM
measured in design §8 (`bench/results/gpu-check-h200.md`): one fake GPU of 141 GB
(131 GiB) and four models of 30.7, 35, 38 and 42.5 GB at `--gpu-memory-utilization 0.3`,
so three fit and a request for the fourth must evict one. Every model is evicted with
`discard+checkpoint`, the plan of more than one step where the GPU is free long before the
eviction ends: level-2 sleep (0.5 s: vLLM drops weights and KV cache), then a real CRIU
dump of the backend tree (root; the mock holds `HOST_MEMORY_GIB` of touched host memory,
as a vLLM process holds its libraries and buffers). Coming back is a real CRIU restore,
then discard's wake steps with `reload_weights` at 6 GB/s, the middle of the page-cache
rate measured on the H200 (4.5–7.7 GB/s): 5.1–7.1 s for these sizes.

The load: `a` and `b` are hot (a request each at the start of every period of
`PERIOD_SECS`); `c` and `d` take turns in the third place (one request per period, `d`
in even periods, `c` in odd ones), so each period's turn-taker is cold when its request
comes: that request, streamed, is timed from its send to its first body byte (the first
token). The one that served the period before has been idle a whole period and is not
needed for another, the case eviction ahead of need is for; without it, it is the
victim of the cold request. Before the next period the bench waits until no model is
moving and the last CRIU image is written, so one period's tail never lands in the next
one's time. The first `warmup` periods give the demand estimates their history and are
not counted.

Variants, each its own daemon, one after the other in one run:
- none: `policy.overlap: false` (the wake waits for the victim's whole eviction);
- overlap: `policy.overlap: true` (the wake starts when the victim's sleep has freed the
  GPU; the dump finishes in the background);
- ahead / both: the same with `policy.evict_ahead: true`, only when this tree's config
  has that field (the eviction-ahead-of-need work); otherwise reported as not run.
Reported per variant: p50 and max of request → first token, gpumux's own switch
duration and phases (log `switch_finished`), how many cold requests found the memory
already free (no eviction phase in their switch), how many evictions freed the GPU early
(`gpu_freed`) and how many were ahead of need (`evict_ahead`).

Run as root from the repository root: `.venv/bin/python -m bench.switch_ahead [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import sys
import tempfile
import time
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
    summarize,
    timed_post,
)
from tests.support.daemon import RunningDaemon, mock_model, running_daemon

NAME = "switch_ahead"
GB = 1e9
GIB = float(1 << 30)
#: The H200 VM (design §8): 141 GB of GPU memory; model sizes of the real-GPU run.
GPU_GB = 141.0
MODELS_GB = {"a": 30.7, "b": 35.0, "c": 38.0, "d": 42.5}
UTILIZATION = 0.3  # 42.3 GB each: three fit in 141 GB, four do not
RELOAD_GB_PER_SEC = 6.0  # reload_weights from the page cache: 4.5-7.7 GB/s measured
SLEEP_L2_SECS = 0.5  # level 2 frees weights and KV cache without copying them
WAKE_CALL_SECS = 0.1  # wake_up?tags=weights / kv_cache: allocation only
STARTUP_SECS = 2.0  # the first start is not measured; kept short
HOST_MEMORY_GIB = 1.0  # what each backend's CRIU image holds (dump and restore copy it)
#: Longer than 1.5 round trips (evict + wake, about 8 s here) of the idle model, so the
#: no-thrash rule of eviction ahead of need lets it leave.
PERIOD_SECS = 25.0
HOT = ("a", "b")
TURNS = ("d", "c")
EVICTION = {"weights": "discard", "process": "checkpoint"}
REQUEST_TIMEOUT_SECS = 180.0
SETTLE_TIMEOUT_SECS = 120.0
EVICT_PHASES = frozenset({"sleep", "suspend", "dump", "stop"})
MOVING = frozenset({"draining", "evicting", "waking", "starting", "stopping"})


@dataclass(frozen=True)
class Plan:
    repetitions: int = 6
    warmup_repetitions: int = 3
    period_secs: float = PERIOD_SECS


QUICK = Plan(repetitions=2, warmup_repetitions=3)


@dataclass(frozen=True)
class Variant:
    name: str
    overlap: bool
    ahead: bool

    def policy(self) -> dict[str, Any]:
        # Both said either way: their defaults are on.
        return {"overlap": self.overlap, "evict_ahead": self.ahead, "min_active_secs": 0}


VARIANTS = (
    Variant("none", overlap=False, ahead=False),
    Variant("overlap", overlap=True, ahead=False),
    Variant("ahead", overlap=False, ahead=True),
    Variant("both", overlap=True, ahead=True),
)


@dataclass
class Result:
    variant: Variant
    ttft_secs: list[float] = field(default_factory=list)
    cold: list[str] = field(default_factory=list)
    switches: list[dict[str, Any]] = field(default_factory=list)
    gpu_freed: int = 0
    evictions_ahead: int = 0


# ---- the daemon and its backends ----------------------------------------------------------


def model_entry(alias: str, gb: float) -> dict[str, Any]:
    knobs = mock_args(
        model_gib=round(gb * GB / GIB, 3),
        sleep_secs=SLEEP_L2_SECS,
        wake_secs=WAKE_CALL_SECS,
        reload_secs=round(gb / RELOAD_GB_PER_SEC, 3),
        startup_secs=STARTUP_SECS,
        host_memory_gib=HOST_MEMORY_GIB,
        ttft_ms=5,
        tokens_per_sec=2000,
    )
    return mock_model(
        model_path=f"mock/{alias}",
        extra_args=[
            "--gpu-memory-utilization",
            str(UTILIZATION),
            *knobs,
            "--disable-uvicorn-access-log",
        ],
        eviction=EVICTION,
    )


def states(daemon: RunningDaemon) -> dict[str, str]:
    """Each model's state as the daemon last logged it."""
    found: dict[str, str] = {}
    for event in daemon.log_events():
        if event.get("event") == "state_changed":
            found[str(event["model"])] = str(event["after"])
    return found


async def settle(daemon: RunningDaemon) -> None:
    """Until no model is moving and every CRIU dump's image is written."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECS
    while time.monotonic() < deadline:
        events = daemon.log_events()
        dumped = sum(1 for e in events if e.get("event") == "criu_dumped")
        written = sum(1 for e in events if e.get("event") == "image_written")
        if written >= dumped and not MOVING.intersection(states(daemon).values()):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"models still moving after {SETTLE_TIMEOUT_SECS}s: {states(daemon)}")


def last_switch(daemon: RunningDaemon, target: str) -> dict[str, Any]:
    """gpumux's record of the newest finished switch to `target`."""
    found = [
        e
        for e in daemon.log_events()
        if e.get("event") == "switch_finished" and e.get("target") == target
    ]
    return found[-1] if found else {}


async def first_token(session: aiohttp.ClientSession, daemon: RunningDaemon, model: str) -> float:
    body = chat_body(model, max_tokens=4, stream=True)
    sample = await timed_post(session, daemon.url + "/v1/chat/completions", body)
    if not sample.ok:
        raise RuntimeError(f"request for {model} failed: {sample.error}")
    return sample.ttfb


async def repetitions(daemon: RunningDaemon, plan: Plan, result: Result) -> None:
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECS)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for model in (*HOT, TURNS[1]):
            await first_token(session, daemon, model)  # cold starts, not measured
        await settle(daemon)
        for period in range(plan.warmup_repetitions + plan.repetitions):
            began = time.monotonic()
            for model in HOT:
                await first_token(session, daemon, model)
            turn = TURNS[period % 2]
            was = states(daemon).get(turn, "stopped")
            secs = await first_token(session, daemon, turn)
            await settle(daemon)
            if period >= plan.warmup_repetitions:
                result.ttft_secs.append(secs)
                result.cold.append(f"{turn} ({was})")
                result.switches.append(last_switch(daemon, turn))
            await asyncio.sleep(max(0.0, began + plan.period_secs - time.monotonic()))


def run_variant(plan: Plan, variant: Variant) -> Result:
    result = Result(variant)
    models = {alias: model_entry(alias, gb) for alias, gb in MODELS_GB.items()}
    with tempfile.TemporaryDirectory(prefix="gpumux-bench-ahead-") as tmp:
        checkpoint = {
            "criu_path": shutil.which("criu") or "criu",
            "images_dir": str(Path(tmp) / "images"),
            "cuda_plugin_dir": None,
            "restore_timeout_secs": 120,
        }
        gpu = {
            "probe": "fake",
            "fake_capacity_gib": [round(GPU_GB * GB / GIB, 3)],
            "sleeping_residual_gib": 0.5,
        }
        with running_daemon(
            Path(tmp),
            models,
            checkpoint=checkpoint,
            gpu=gpu,
            policy=variant.policy(),
        ) as daemon:
            asyncio.run(repetitions(daemon, plan, result))
            events = daemon.log_events()
    result.gpu_freed = sum(1 for e in events if e.get("event") == "gpu_freed")
    result.evictions_ahead = sum(1 for e in events if e.get("event") == "evict_ahead")
    return result


# ---- the report -----------------------------------------------------------------------------


def variant_result(result: Result) -> dict[str, Any]:
    ttft = summarize(result.ttft_secs)
    durations = [float(e["duration_s"]) for e in result.switches if "duration_s" in e]
    # A victim evicted ahead of need is still named, but its eviction is no phase here.
    no_victim = sum(1 for e in result.switches if not EVICT_PHASES & set(e.get("phases") or {}))
    return {
        "variant": result.variant.name,
        "overlap": result.variant.overlap,
        "evict_ahead": result.variant.ahead,
        "ttft_secs": result.ttft_secs,
        "ttft": ttft.as_dict(),
        "cold_models": result.cold,
        "switch_duration": summarize(durations).as_dict() if durations else None,
        "switch_phases": [e.get("phases") for e in result.switches],
        "switch_victims": [e.get("victims") for e in result.switches],
        "cold_requests_without_victim": no_victim,
        "gpu_freed_events": result.gpu_freed,
        "evictions_ahead_of_need": result.evictions_ahead,
    }


READING = (
    "Reading it: `none` pays the victim's level-2 sleep, its CRIU dump, then the cold "
    "model's restore and reload, in a row. `overlap` starts the restore once the sleep has "
    "freed the GPU (`gpu_freed`), so the dump leaves the request's path (it still competes "
    "with the restore for this machine's CPUs and disk). `ahead` evicted the idle "
    "turn-taker during its idle period (`evict_ahead`), so the request found the memory "
    "free and paid only the wake; `both` takes the same path (an eviction finished before "
    "the request leaves nothing to overlap), so their difference is the noise of a shared "
    "machine. What remains in every variant is the wake itself: the restore and "
    "`reload_weights` at the H200's page-cache rate."
)


def render(payload: dict[str, Any]) -> str:
    ran = {v["variant"]: v for v in payload["variants"]}
    base = ran["none"]["ttft"]["p50"]
    rows = []
    for variant in VARIANTS:
        got = ran.get(variant.name)
        if got is None:
            flags = ["yes" if variant.overlap else "no", "yes" if variant.ahead else "no"]
            rows.append([variant.name, *flags, 0, "–", "–", "–", "–", "–", "not run"])
            continue
        ttft, switch = got["ttft"], got["switch_duration"] or {}
        rows.append(
            [
                variant.name,
                "yes" if variant.overlap else "no",
                "yes" if variant.ahead else "no",
                ttft["n"],
                fmt(ttft["p50"]),
                fmt(ttft["max"]),
                fmt(base / ttft["p50"] if ttft["p50"] else None),
                fmt(switch.get("p50")),
                f"{got['cold_requests_without_victim']} of {ttft['n']}",
                f"{got['gpu_freed_events']} early frees, {got['evictions_ahead_of_need']} ahead",
            ]
        )
    headers = [
        "variant",
        "overlap",
        "ahead of need",
        "n",
        "request → first token p50 s",
        "max s",
        "none p50 / this p50",
        "gpumux switch p50 s",
        "memory already free",
        "evictions (whole run)",
    ]
    plan = payload["plan"]
    lines = [
        "# Switch ahead: request for a cold model → first token (mock backends, H200-VM pacing)",
        "",
        *environment_lines(payload["environment"]),
        "- One fake 141 GB GPU; four mock models of "
        + ", ".join(f"{gb:g}" for gb in MODELS_GB.values())
        + f" GB at utilization {UTILIZATION} (three fit). Eviction `discard+checkpoint`: "
        f"level-2 sleep {SLEEP_L2_SECS} s, then a real CRIU dump of a backend holding "
        f"{HOST_MEMORY_GIB:g} GiB; back: real CRIU restore, then reload_weights at "
        f"{RELOAD_GB_PER_SEC:g} GB/s (H200 page cache 4.5–7.7 GB/s).",
        f"- Every {plan['period_secs']:g} s: one request each to the hot `a` and `b`, then "
        "one to `d` (even periods) or `c` (odd), which is cold then (timed to its first "
        "streamed byte); the other turn-taker has idled a whole period. "
        f"{plan['repetitions']} measured periods per variant after "
        f"{plan['warmup_repetitions']} warm-up; each variant is its own daemon, run one "
        "after another.",
        "",
        markdown_table(headers, rows),
        "",
        "Phases of each measured switch as gpumux logged them (seconds; a switch whose "
        "memory was already free has no sleep or dump):",
        "",
    ]
    lines += [f"- {got['variant']}: {got['switch_phases']}" for got in payload["variants"]]
    lines += ["", READING]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[Plan, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="two measured periods per variant")
    parser.add_argument("-n", "--repetitions", type=int, help="measured periods (6)")
    parser.add_argument("--period-secs", type=float, help=f"one period ({PERIOD_SECS:g})")
    parser.add_argument("--name", help="results file stem (default switch_ahead[_quick])")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.repetitions is not None and args.repetitions < 1:
        parser.error("--repetitions must be >= 1")
    plan = dataclasses.replace(
        plan,
        repetitions=args.repetitions or plan.repetitions,
        period_secs=plan.period_secs if args.period_secs is None else args.period_secs,
    )
    return plan, args.name or (NAME + "_quick" if args.quick else NAME)


def main(argv: list[str] | None = None) -> int:
    plan, name = parse_args(argv)
    env = environment()
    started = time.perf_counter()
    results = []
    for variant in VARIANTS:
        print(f"{NAME}: {variant.name}, {plan.repetitions} repetitions", flush=True)
        results.append(variant_result(run_variant(plan, variant)))
    payload: dict[str, Any] = {
        "bench": NAME,
        "environment": env,
        "plan": dataclasses.asdict(plan),
        "variants": results,
        "wall_secs": round(time.perf_counter() - started, 1),
    }
    publish(name, payload, render(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
