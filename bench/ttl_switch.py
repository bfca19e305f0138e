"""What an idle TTL takes off the switch path: a switch to a sleeping model when the
victim is still awake, against the same switch when the victim's TTL already evicted it.

One daemon, one run, two pairs of `mock_vllm` models at `--gpu-memory-utilization 0.9`,
each pair on its own fake 80 GiB GPU (only one of a pair can be awake):
- pair `awake-*` (GPU 0) has no TTL: the switch to the sleeping model must first put the
  awake one to sleep (level 1), then wake the target;
- pair `ttl-*` (GPU 1) has `ttl_secs`: the bench waits until the awake model's TTL has
  put it to sleep, then asks for the other, whose switch is a wake alone.
The mock's sleep and wake latencies are set to costs measured on an H200 (design §8): a
vLLM process's first level-1 sleep of 30 GB took 11–13 s (12 s here) and its wake 3.5 s,
times `--scale` (default 0.25, to keep the run near a minute; the ratio is what matters;
`--scale 1` gives the measured seconds). Each round switches both pairs once (roles
alternate), timing the target request from the client (first body byte of a stream) and
reading `X-Gpumux-Queue-Seconds`. The cuda-checkpoint costs (18 s suspend, 6.5 s resume)
are not run here: the mock has no suspend knob, and the shape is the same.

Run from the repository root: `.venv/bin/python bench/ttl_switch.py [--rounds N] [--scale S]`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.common import (
    chat_body,
    environment,
    environment_lines,
    fmt,
    get_json_async,
    markdown_table,
    mock_args,
    summarize,
    write_results,
)
from tests.support.daemon import RunningDaemon, mock_model, running_daemon
from tests.support.ports import free_port

NAME = "ttl_switch"
#: Costs measured on one H200 (design §8): first level-1 sleep of 30 GB, and its wake.
SLEEP_SECS = 12.0
WAKE_SECS = 3.5
TTL_SECS = 1.0
PAIRS = {"awake": 0, "ttl": 1}  # pair -> its GPU


def models(scale: float) -> dict[str, dict[str, Any]]:
    knobs = mock_args(sleep_secs=SLEEP_SECS * scale, wake_secs=WAKE_SECS * scale, startup_secs=0.2)
    entries: dict[str, dict[str, Any]] = {}
    for pair, gpu in PAIRS.items():
        for side in ("x", "y"):
            entry = mock_model(extra_args=knobs, gpus=[gpu])
            if pair == "ttl":
                entry["ttl_secs"] = TTL_SECS
            entries[f"{pair}-{side}"] = entry
    return entries


async def state(session: aiohttp.ClientSession, admin: str, model: str) -> str:
    status = await get_json_async(session, f"{admin}/api/status")
    result: str = status["models"][model]["state"]
    return result


async def wait_state(
    session: aiohttp.ClientSession, admin: str, model: str, want: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while await state(session, admin, model) != want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{model} not {want} within {timeout}s")
        await asyncio.sleep(0.05)


async def request(session: aiohttp.ClientSession, url: str, model: str) -> tuple[float, float]:
    """(seconds to the first body byte, X-Gpumux-Queue-Seconds) of one streamed chat."""
    body = chat_body(model, max_tokens=4, stream=True)
    started = time.perf_counter()
    async with session.post(
        f"{url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    ) as response:
        response.raise_for_status()
        await response.content.readany()
        ttfb = time.perf_counter() - started
        await response.read()
        return ttfb, float(response.headers["X-Gpumux-Queue-Seconds"])


async def measure(daemon: RunningDaemon, rounds: int, scale: float) -> dict[str, Any]:
    url, admin = daemon.url, f"http://127.0.0.1:{daemon.config['admin_port']}"
    timeout = aiohttp.ClientTimeout(total=120)
    samples: dict[str, list[dict[str, float]]] = {pair: [] for pair in PAIRS}
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for pair in PAIRS:  # setup: y has run and sleeps, x is awake
            await request(session, url, f"{pair}-y")
            await request(session, url, f"{pair}-x")
        awake = dict.fromkeys(PAIRS, "x")
        for _ in range(rounds):
            for pair in PAIRS:
                victim = f"{pair}-{awake[pair]}"
                target = f"{pair}-{'y' if awake[pair] == 'x' else 'x'}"
                if pair == "ttl":  # the TTL evicts the victim off the switch path
                    await wait_state(session, admin, victim, "sleeping", 60 * max(scale, 0.1))
                else:
                    assert await state(session, admin, victim) == "ready"
                ttfb, queued = await request(session, url, target)
                samples[pair].append({"ttfb_s": ttfb, "queue_s": queued})
                awake[pair] = target[-1]
    return {
        pair: {
            "ttfb_s": summarize([s["ttfb_s"] for s in rows]).as_dict(),
            "queue_s": summarize([s["queue_s"] for s in rows]).as_dict(),
            "samples": rows,
        }
        for pair, rows in samples.items()
    }


def report(results: dict[str, Any], args: argparse.Namespace, env: dict[str, Any]) -> str:
    awake, ttl = results["awake"]["ttfb_s"], results["ttl"]["ttfb_s"]
    rows = [
        [
            "victim still awake (no TTL)",
            "sleep victim + wake target",
            fmt(awake["p50"]),
            fmt(awake["max"]),
            fmt(results["awake"]["queue_s"]["p50"]),
        ],
        [
            f"victim evicted by its TTL ({TTL_SECS:g} s)",
            "wake target",
            fmt(ttl["p50"]),
            fmt(ttl["max"]),
            fmt(results["ttl"]["queue_s"]["p50"]),
        ],
    ]
    table = markdown_table(
        ["switch to a sleeping model", "on the path", "TTFB p50 s", "TTFB max s", "queued p50 s"],
        rows,
    )
    return "\n".join(
        [
            "# Idle TTL vs a switch with the victim still awake",
            "",
            f"Mock costs: level-1 sleep {SLEEP_SECS * args.scale:g} s, wake "
            f"{WAKE_SECS * args.scale:g} s (the H200's {SLEEP_SECS:g} s / {WAKE_SECS:g} s "
            f"× scale {args.scale:g}); {args.rounds} switches per row, one daemon, one run.",
            "",
            table,
            "",
            f"The TTL saves {fmt(awake['p50'] - ttl['p50'])} s of the p50 "
            f"({fmt(100 * (1 - ttl['p50'] / awake['p50']), 0)} %): the victim's sleep "
            "happened while nobody waited.",
            "",
            *environment_lines(env),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--scale", type=float, default=0.25)
    parser.add_argument("--name", default=NAME)
    args = parser.parse_args(argv)
    env = environment()
    tmp = Path(tempfile.mkdtemp(prefix="gpumux-ttl-bench-"))
    with running_daemon(
        tmp,
        models(args.scale),
        admin_port=free_port(),
        gpu={"probe": "fake", "fake_capacity_gib": [80, 80], "sleeping_residual_gib": 0.5},
        supervision={"sleep_timeout_secs": 120, "wake_timeout_secs": 120},
    ) as daemon:
        results = asyncio.run(measure(daemon, args.rounds, args.scale))
    payload = {
        "name": args.name,
        "scale": args.scale,
        "mock_sleep_secs": SLEEP_SECS * args.scale,
        "mock_wake_secs": WAKE_SECS * args.scale,
        "ttl_secs": TTL_SECS,
        "rounds": args.rounds,
        "results": results,
        "environment": env,
    }
    json_path, md_path = write_results(args.name, payload, report(results, args, env))
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
