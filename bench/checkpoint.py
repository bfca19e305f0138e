"""What a CRIU checkpoint costs and saves, against a cold start of the same backend, in one run.

For mock backends holding 1 and 4 GiB of real host memory (`--mock-host-memory-gib`,
every page written, so CRIU must copy all of it), two models share one fake GPU at
`--gpu-memory-utilization 0.9`, so every request for the other model evicts the first.
Per size, two daemons run side by side in time:
- checkpoint: the measured model is evicted with `discard+checkpoint`; each round
  switches away (CRIU dump, image hashed and written in the background) and back (CRIU
  restore, then discard's wake steps), timing the request that brings it back to its
  first streamed byte;
- cold: the same backend evicted with `retain+stop`; each round's request pays a cold
  start of the backend (spawn, allocate and touch the memory, listen) instead;
- cold + init: the same again with `--mock-startup-secs 18`, the start-up a real vLLM
  pays before it listens (17-19 s measured for the CPU build, reference/vllm-cpu.md §6;
  far more with CUDA graphs on a GPU). The mock's own cold start is only a memory fill,
  which CRIU cannot beat: it must copy the same memory through a file.
Reported: dump seconds (gpumux's `criu_dumped`), image size, finalisation seconds
(`criu_dumped` → `image_written`: sha256 + manifest, off the switch path), restore
seconds (`criu_restored`), request → first token after a restore and after a cold start,
and their ratio. Images live on the same local disk as /tmp and are read back from the
page cache, as they would be right after a dump.

Run as root from the repository root: `.venv/bin/python -m bench.checkpoint [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    chat_body,
    environment,
    environment_lines,
    fmt,
    markdown_table,
    publish,
    ratio,
    summarize,
    timed_post,
)
from tests.support.daemon import RunningDaemon, mock_model, running_daemon

NAME = "checkpoint"
SIZES_GIB = (1.0, 4.0)
CHECKPOINT = {"weights": "discard", "process": "checkpoint"}
STOP = {"weights": "retain", "process": "stop"}
REQUEST_TIMEOUT_SECS = 120.0


def _ts(event: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


async def _ttfb(session: aiohttp.ClientSession, daemon: RunningDaemon, model: str) -> float:
    body = chat_body(model, max_tokens=4, stream=True, prompt="the same prompt")
    sample = await timed_post(session, daemon.url + "/v1/chat/completions", body)
    if not sample.ok:
        raise RuntimeError(f"request for {model} failed: {sample.error}")
    return sample.ttfb


async def _rounds(daemon: RunningDaemon, rounds: int) -> tuple[float, list[float]]:
    """The first (cold) request for m, then `rounds` of: switch away, time the way back."""
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECS)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        first = await _ttfb(session, daemon, "m")
        back = []
        for _ in range(rounds):
            await _ttfb(session, daemon, "other")
            await _wait_idle_images(daemon)
            back.append(await _ttfb(session, daemon, "m"))
        return first, back


async def _wait_idle_images(daemon: RunningDaemon) -> None:
    """Let a dump's background finalisation end, so it is not timed into the restore."""
    for _ in range(600):
        dumped = [e for e in daemon.log_events() if e.get("event") == "criu_dumped"]
        written = [e for e in daemon.log_events() if e.get("event") == "image_written"]
        if len(written) >= len(dumped):
            return
        await asyncio.sleep(0.05)


#: vLLM's own start-up before it listens (CPU build, tiny model), for the "cold + init" run.
VLLM_INIT_SECS = 18.0


def _run(
    tmp: Path, size_gib: float, eviction: dict[str, str], rounds: int, startup_secs: float = 0.0
) -> dict[str, Any]:
    knobs = ["--mock-host-memory-gib", str(size_gib), "--disable-uvicorn-access-log"]
    if startup_secs:
        knobs += ["--mock-startup-secs", str(startup_secs)]
    models = {"m": mock_model(extra_args=knobs, eviction=eviction), "other": mock_model()}
    checkpoint = {
        "criu_path": shutil.which("criu") or "criu",
        "images_dir": str(tmp / "images"),
        "cuda_plugin_dir": None,
        "restore_timeout_secs": 120,
    }
    with running_daemon(tmp, models, checkpoint=checkpoint) as daemon:
        first, back = asyncio.run(_rounds(daemon, rounds))
        events = daemon.log_events()
    dumped = [e for e in events if e.get("event") == "criu_dumped" and e.get("model") == "m"]
    written = [e for e in events if e.get("event") == "image_written" and e.get("model") == "m"]
    restored = [e for e in events if e.get("event") == "criu_restored" and e.get("model") == "m"]
    return {
        "first_request_secs": first,
        "return_request_secs": back,
        "dump_secs": [e["secs"] for e in dumped],
        "image_bytes": [e["bytes"] for e in written],
        "finalize_secs": [_ts(w) - _ts(d) for d, w in zip(dumped, written, strict=False)],
        "restore_secs": [e["secs"] for e in restored],
    }


def _p50(values: list[float]) -> float | None:
    return summarize(values).p50 if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one round per size")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    env = environment()
    results: dict[str, Any] = {}
    for size in SIZES_GIB:
        with tempfile.TemporaryDirectory(prefix="gpumux-bench-ckpt-") as tmp:
            ckpt = _run(Path(tmp) / "checkpoint", size, CHECKPOINT, rounds)
        with tempfile.TemporaryDirectory(prefix="gpumux-bench-cold-") as tmp:
            cold = _run(Path(tmp) / "cold", size, STOP, rounds)
        with tempfile.TemporaryDirectory(prefix="gpumux-bench-init-") as tmp:
            init = _run(Path(tmp) / "init", size, STOP, rounds, VLLM_INIT_SECS)
        results[f"{size:g}"] = {"checkpoint": ckpt, "cold": cold, "cold_init": init}
        print(f"{size:g} GiB: done", flush=True)
    rows = []
    for size_label, run in results.items():
        ckpt, cold, init = run["checkpoint"], run["cold"], run["cold_init"]
        restore_ttft = _p50(ckpt["return_request_secs"])
        cold_ttft = _p50([cold["first_request_secs"], *cold["return_request_secs"]])
        init_ttft = _p50([init["first_request_secs"], *init["return_request_secs"]])
        image_mib = _p50([b / 2**20 for b in ckpt["image_bytes"]])
        rows.append(
            [
                size_label,
                fmt(image_mib, 0),
                fmt(_p50(ckpt["dump_secs"])),
                fmt(_p50(ckpt["finalize_secs"])),
                fmt(_p50(ckpt["restore_secs"])),
                fmt(restore_ttft),
                fmt(cold_ttft),
                fmt(ratio(cold_ttft or 0.0, restore_ttft or 0.0), 1),
                fmt(init_ttft),
                fmt(ratio(init_ttft or 0.0, restore_ttft or 0.0), 1),
            ]
        )
    table = markdown_table(
        [
            "host memory GiB",
            "image MiB",
            "dump s",
            "finalize s (off path)",
            "criu restore s",
            "request→first token, restore s",
            "request→first token, cold start s",
            "cold / restore",
            f"cold start + {VLLM_INIT_SECS:g} s init s",
            "(cold + init) / restore",
        ],
        rows,
    )
    markdown = "\n".join(
        [
            "# CRIU checkpoint vs cold start (mock backends, real CRIU)",
            "",
            f"p50 over {rounds} round(s) per size; every path includes evicting the other",
            "model (offload sleep); the restore also runs discard's wake steps. The mock's",
            "cold start is only a memory fill; `+ init` adds the start-up a real vLLM pays",
            f"before it listens ({VLLM_INIT_SECS:g} s, CPU build), which a restore skips.",
            "",
            table,
            "",
            *environment_lines(env),
        ]
    )
    payload = {
        "environment": env,
        "rounds": rounds,
        "sizes_gib": list(SIZES_GIB),
        "results": results,
    }
    publish(NAME, payload, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
