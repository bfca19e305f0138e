"""The check's phases once its prerequisites are in place (imports gpumux and NVML).

Owns: reading the card (NVML, or the fake ledger's size for --fake-gpu), the pinned-copy
reference, tests/gpu per mode (the CLI mode says "not run" when `cuda-checkpoint` is
absent), sizing and running the daemon phase with the memory sampler around it, the CRIU
row (run only where criu >= 4.2 and its CUDA plugin exist), and the verdicts.
Does not: parse arguments or install anything (`main`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.gpu_check import drive, gputests, pinned, prereqs, timings, verdicts
from tests.support.gpu_check.plan import CRIU, GIB, STRATEGIES, Plan, sizing_problem
from tests.support.gpu_check.sampler import Ledger, Nvml, Sampler

FAKE_CAPACITY = 80 * GIB
Write = Callable[[Path, dict[str, Any], float], None]


def say(text: str) -> None:
    print(f"gpu-check: {text}", flush=True)


def _criu(results: dict[str, Any], fake_gpu: bool, wanted: bool) -> str | None:
    tools = results["tools"]
    criu = tools.get("criu")
    version = prereqs.criu_version(criu) if criu else None
    new_enough = version is not None and prereqs.version_tuple(version) >= (4, 2)
    plugin = fake_gpu or tools.get("criu_cuda_plugin") is not None
    use = wanted and new_enough and plugin
    found = f"criu {version or 'absent'}, CUDA plugin {tools.get('criu_cuda_plugin') or 'absent'}"
    detail = f"ran ({found}): its switches are below" if use else (
        f"not run: needs criu>=4.2 + CUDA plugin ({found})"
    )  # fmt: skip
    if not wanted:
        detail = "not run: --criu off"
    results["criu"] = detail
    results["checks"].append(verdicts.row("CRIU with its CUDA plugin", use or None, detail))
    return criu if use else None


def run_all(
    args: argparse.Namespace,
    work: Path,
    out: Path,
    env: dict[str, str],
    started: float,
    results: dict[str, Any],
    write: Write,
) -> int:
    deadline = started + args.budget_secs
    if args.fake_gpu:
        gpu: Nvml | Ledger = Ledger(work / "state" / "fake-gpu-ledger.json")
        total = FAKE_CAPACITY
    else:
        nvml = Nvml()
        gpu, total = nvml, nvml.read()[1]
        torch = importlib.import_module("torch")  # the prerequisite step made sure of it
        results["machine"].update(torch=torch.__version__, gpu=nvml.name, driver=nvml.driver)
        results["gpu_processes_before"] = nvml.processes()
    results["machine"]["total_bytes"] = total
    rows: list[dict[str, Any]] = []
    results["gpu_tests"] = rows
    if args.fake_gpu:
        results["reference"] = {"error": "not run: --fake-gpu"}
        rows.append(gputests.not_run("driver", "not run: --fake-gpu"))
    else:
        say("pinned host<->device reference ...")
        results["reference"] = pinned.run(args.weights_gib, env, timeout=120)
        write(out, results, started)
        if not args.skip_tests:
            say("tests/gpu, driver API mode ...")
            rows.append(gputests.run_mode("driver", env, out / "tests", 200, prereqs_repo()))
            write(out, results, started)
            if results["tools"].get("cuda-checkpoint"):
                say("tests/gpu, cuda-checkpoint CLI mode ...")
                rows.append(gputests.run_mode("cli", env, out / "tests", 120, prereqs_repo()))
            else:
                why = "not run: no cuda-checkpoint binary on PATH (or GPUMUX_CUDA_CHECKPOINT)"
                rows.append(gputests.not_run("cli", why))
    results["checks"] += verdicts.gpu_test_rows(rows)
    write(out, results, started)
    return _daemon_phase(args, work, out, gpu, total, deadline, started, results, write)


def prereqs_repo() -> Path:
    return Path(__file__).resolve().parents[3]


def _daemon_phase(
    args: argparse.Namespace,
    work: Path,
    out: Path,
    gpu: Nvml | Ledger,
    total: int,
    deadline: float,
    started: float,
    results: dict[str, Any],
    write: Write,
) -> int:
    criu = _criu(results, args.fake_gpu, args.criu == "auto")
    strategies = (*STRATEGIES, CRIU) if criu else STRATEGIES
    problem = sizing_problem(args.utilization, len(strategies), 1.0 * GIB / total)
    tools = results["tools"]
    cli = tools.get("cuda-checkpoint") or "cuda-checkpoint"
    if args.fake_gpu:
        cli = str(work / "bin" / "mock-cuda-checkpoint")  # a shim: no install needed
        Path(cli).parent.mkdir(parents=True, exist_ok=True)
        Path(cli).write_text(
            f'#!/bin/sh\nexec {sys.executable} -m mock_vllm.cuda_checkpoint "$@"\n'
        )
        Path(cli).chmod(0o755)
    plan = Plan(work, strategies, args.utilization, args.weights_gib, total, args.fake_gpu,
                cli, criu)  # fmt: skip
    results["plan_note"] = (
        f"{len(strategies)} models at --gpu-memory-utilization {args.utilization} "
        f"({args.utilization * total / 1e9:.1f} GB each of {total / 1e9:.1f} GB: three fit, "
        f"four do not), {args.weights_gib} GiB of weights each, {args.rounds} requests per "
        "model round-robin through the proxy; every switch evicts the least recently used."
    )
    if problem:
        results["checks"].append(verdicts.row("sizing", False, problem))
    sampler = Sampler(gpu.read)
    sampler.start()
    say(f"daemon with {[s.alias for s in strategies]} ...")
    try:
        run = drive.run(plan, gpu, args.rounds, deadline, work)
    finally:
        sampler.stop()
    _collect(results, plan, run, sampler)
    elapsed = time.monotonic() - started
    results["checks"] += verdicts.switch_rows(results, args.fake_gpu)
    results["checks"] += verdicts.memory_rows(results)
    results["checks"].append(verdicts.row(
        f"finished within {args.budget_secs:.0f} s", elapsed <= args.budget_secs
        and not run.stopped_out_of_time, f"{elapsed:.0f} s",
    ))  # fmt: skip
    results["ok"] = verdicts.verdict(results["checks"])
    write(out, results, started)
    _keep_logs(work, out)
    gpu.close()
    say(f"{'PASS' if results['ok'] else 'FAIL'}; results in {out}")
    return 0 if results["ok"] else 1


def _keep_logs(work: Path, out: Path, lines: int = 400) -> None:
    """The tails of the daemon's and every backend's log (the work folder is deleted)."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for path in [work / "daemon" / "gpumux.log", *sorted((work / "state" / "logs").glob("*"))]:
        if path.is_file():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            (logs / path.name).write_text("\n".join(tail) + "\n")


def _collect(results: dict[str, Any], plan: Plan, run: drive.Run, sampler: Sampler) -> None:
    per_process = timings.process_bytes_awake(run.snapshots)
    times = timings.per_strategy(plan, run.events, per_process)
    results["strategies"] = {a: t.as_dict() for a, t in times.items()}
    key = "text" if plan.fake_gpu else "checksum"
    results["checksums"] = {
        s.alias: [a[key] for a in run.answers if a["model"] == s.alias] for s in plan.strategies
    }
    results["held_while_evicted"] = timings.held_while_evicted(run.snapshots)
    results["answers"] = run.answers
    results["snapshots"] = run.snapshots
    results["backend_ops"] = run.backend_ops
    results["gpu_memory"] = {
        "total_bytes": sampler.total, "peak_used_bytes": sampler.peak_used,
        "samples": sampler.samples, "errors": sampler.errors, "series": sampler.series,
    }  # fmt: skip
    results["daemon"] = {
        "exit_code": run.exit_code, "survivors": run.survivors,
        "gpu_leftovers": run.gpu_leftovers, "error": run.error,
        "config": run.config, "stopped_out_of_time": run.stopped_out_of_time,
    }  # fmt: skip
