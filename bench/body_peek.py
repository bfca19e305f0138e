"""What reading `model` and `stream` costs gpumux: the old json.loads peek against the
msgspec reader (http/body.py), on the same bodies, in one run.

Two measurements, side by side:
1. In process, CPU time per call of the old peek (Python's `json.loads` builds the whole
   document, then reads two keys) and of `gpumux.http.body.peek`, on prompts of 1 MiB
   and 16 MiB in five shapes: prose, a base64 image part, source code (braces, quotes
   and escapes everywhere), an agent trace of many messages, and token ids. Calls
   alternate old/new so drift falls on both alike.
2. End to end, the gpumux process's own CPU per request (psutil, user + system) for the
   same bodies sent through two real daemons at once,
   each with its own mock backend: one running the commit before the reader
   (`--before`, default 8ceb006, via PYTHONPATH onto a `git archive` of its `src/`) and
   one running this tree. Rounds alternate ABBA. Token ids go to `/v1/completions`, the
   rest to `/v1/chat/completions`; the mock answers 400 to a shape it does not take (its
   own judgement, after gpumux forwarded the whole body: the same work for gpumux).

Run from the repository root: `.venv/bin/python -m bench.body_peek [--quick]`.
Writes bench/results/body_peek.json and .md.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import statistics
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psutil

from bench.common import REPO_ROOT, environment, environment_lines, markdown_table, write_results
from gpumux.http.body import peek
from tests.support.daemon import RunningDaemon, mock_model, running_daemon

NAME = "body_peek"
MIB = 1024 * 1024
MODEL = "m"
SHAPES = ("prose", "base64_image", "code", "agent_trace", "token_ids")
#: psutil reads CPU time in 10 ms ticks: small bodies need more requests per round.
REQUESTS_PER_ROUND = {1: 25, 16: 5}


def old_peek(body: bytes) -> tuple[str, bool]:
    """gpumux's `_peek` before http/body.py (commit 8ceb006), errors left out."""
    document = json.loads(body)
    return document["model"], document.get("stream") is True


def new_peek(body: bytes) -> tuple[str, bool]:
    peeked = peek(body)
    return peeked.model, peeked.stream


# ---- bodies --------------------------------------------------------------------------------


def _chat(content: Any, messages_before: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 1,
        "stream": False,
        "messages": [*(messages_before or []), {"role": "user", "content": content}],
    }


def make_body(shape: str, size: int, rng: random.Random) -> bytes:
    """A chat or completions body of about `size` bytes, in `shape`."""
    if shape == "prose":
        words = ["the", "model", "reads", "a", "long", "document", "about", "gpus", "and", "queues"]
        text = " ".join(rng.choice(words) for _ in range(size // 5))
        document = _chat(text[:size])
    elif shape == "base64_image":
        image = base64.b64encode(rng.randbytes(size * 3 // 4)).decode()
        parts = [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + image}},
        ]
        document = _chat(parts)
    elif shape == "code":
        lines = [
            "def handler(request: dict[str, list[int]]) -> dict[str, str]:\n",
            '    if request["items"] and {"k": [1, 2]}:\n',
            '        return {"path": "C:\\\\tmp\\\\x", "quote": "\\"q\\""}\n',
            "    values = [x for x in range(10) if x % 2]  # {braces} [brackets]\n",
        ]
        text = "".join(rng.choice(lines) for _ in range(size // 55))
        document = _chat(text)
    elif shape == "agent_trace":
        turn = "Observation: the tool returned 42 rows; next I will filter them. " * 4
        count = size // (len(turn) + 40)
        history = [
            {"role": "assistant" if i % 2 else "user", "content": turn} for i in range(count)
        ]
        document = _chat("Summarise.", history)
    elif shape == "token_ids":
        document = {
            "model": MODEL,
            "max_tokens": 1,
            "prompt": [rng.randrange(150_000) for _ in range(size // 7)],
        }
    else:
        raise ValueError(shape)
    return json.dumps(document).encode()


# ---- in process --------------------------------------------------------------------------


def cpu_per_call(fn: Callable[[bytes], tuple[str, bool]], body: bytes) -> float:
    started = time.process_time()
    result = fn(body)
    del result  # freeing what json.loads built is part of its cost
    return time.process_time() - started


def in_process(sizes: list[int], reps: int, rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        for shape in SHAPES:
            body = make_body(shape, size, rng)
            assert old_peek(body) == new_peek(body), shape
            old: list[float] = []
            new: list[float] = []
            for rep in range(reps):
                pair = [(old_peek, old), (new_peek, new)]
                for fn, samples in pair if rep % 2 == 0 else reversed(pair):
                    samples.append(cpu_per_call(fn, body))
            rows.append(_row(shape, size, len(body), old, new))
            print(f"  in process: {shape:<13} {size // MIB:>2} MiB done", flush=True)
    return rows


def _row(shape: str, size: int, length: int, old: list[float], new: list[float]) -> dict[str, Any]:
    old_ms, new_ms = 1000 * statistics.median(old), 1000 * statistics.median(new)
    return {
        "shape": shape,
        "size_mib": size // MIB,
        "body_bytes": length,
        "samples": len(old),
        "old_ms": round(old_ms, 3),
        "new_ms": round(new_ms, 3),
        "ratio_new_over_old": round(new_ms / old_ms, 3) if old_ms else None,
    }


# ---- end to end ----------------------------------------------------------------------------


@contextmanager
def source_of(ref: str) -> Iterator[Path]:
    """`src/` of commit `ref`, unpacked into a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="gpumux-before-") as tmp:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", ref, "src"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        tar_path = Path(tmp) / "src.tar"
        tar_path.write_bytes(archive)
        with tarfile.open(tar_path) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp) / "src"


def start(stack: ExitStack, tmp: Path, env: dict[str, str]) -> RunningDaemon:
    backend = mock_model(extra_args=["--max-model-len", "100000000", "--mock-ttft-ms", "0"])
    return stack.enter_context(
        running_daemon(tmp, {MODEL: backend}, env=env, max_request_body_bytes=40 * MIB)
    )


def post(daemon: RunningDaemon, body: bytes, path: str = "/v1/chat/completions") -> int:
    request = urllib.request.Request(
        daemon.url + path,
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)


def daemon_cpu(daemon: RunningDaemon) -> float:
    times = psutil.Process(daemon.process.pid).cpu_times()
    return float(times.user + times.system)


def end_to_end(
    before_ref: str, sizes: list[int], rounds: int, rng: random.Random, scale: float
) -> list[dict[str, Any]]:
    rows = []
    with ExitStack() as stack:
        before_src = stack.enter_context(source_of(before_ref))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="body-peek-")))
        daemons = {
            "before": start(stack, tmp / "before", {"PYTHONPATH": str(before_src)}),
            "after": start(stack, tmp / "after", {}),
        }
        for daemon in daemons.values():  # cold-start each backend outside the timing
            post(daemon, make_body("prose", 1024, rng))
        for size in sizes:
            requests = max(1, round(REQUESTS_PER_ROUND[size // MIB] * scale))
            for shape in SHAPES:
                body = make_body(shape, size, rng)
                path = "/v1/completions" if shape == "token_ids" else "/v1/chat/completions"
                cpu = dict.fromkeys(daemons, 0.0)
                statuses: dict[str, set[int]] = {mode: set() for mode in daemons}
                for round_no in range(rounds):
                    order = list(daemons) if round_no % 2 == 0 else list(reversed(daemons))
                    for mode in order:
                        before = daemon_cpu(daemons[mode])
                        for _ in range(requests):
                            statuses[mode].add(post(daemons[mode], body, path))
                        cpu[mode] += daemon_cpu(daemons[mode]) - before
                count = rounds * requests
                old_ms, new_ms = 1000 * cpu["before"] / count, 1000 * cpu["after"] / count
                rows.append(
                    {
                        "shape": shape,
                        "size_mib": size // MIB,
                        "body_bytes": len(body),
                        "requests_each": count,
                        "statuses": {m: sorted(s) for m, s in statuses.items()},
                        "old_ms": round(old_ms, 2),
                        "new_ms": round(new_ms, 2),
                        "ratio_new_over_old": round(new_ms / old_ms, 3) if old_ms else None,
                    }
                )
                print(f"  end to end: {shape:<13} {size // MIB:>2} MiB done", flush=True)
    return rows


# ---- report --------------------------------------------------------------------------------


def render(payload: dict[str, Any]) -> str:
    env, plan = payload["environment"], payload["plan"]
    lines = [
        "# Reading `model` and `stream`: json.loads (before) vs the msgspec reader (after)",
        "",
        *environment_lines(env),
        f"- Before: commit {plan['before']} (`_peek` = `json.loads` of the whole body); "
        "after: this tree (`gpumux.http.body.peek`).",
        "- CPU time (user + system), so other work on the machine slows both alike; "
        "ratios matter more than absolutes.",
        "",
        "## In process: CPU per call (median)",
        "",
        f"{plan['reps']} calls each, old and new alternating.",
        "",
        markdown_table(
            ["shape", "prompt", "body bytes", "before (ms)", "after (ms)", "after / before"],
            [
                [
                    r["shape"],
                    f"{r['size_mib']} MiB",
                    r["body_bytes"],
                    r["old_ms"],
                    r["new_ms"],
                    r["ratio_new_over_old"],
                ]
                for r in payload["in_process"]
            ],
        ),
        "",
        "## End to end: gpumux CPU per request, through the real proxy",
        "",
        f"Two daemons at once, {plan['rounds']} ABBA rounds of sequential requests; "
        "gpumux's process only (its backend is not counted).",
        "",
        markdown_table(
            [
                "shape",
                "prompt",
                "requests each",
                "backend statuses",
                "before (ms)",
                "after (ms)",
                "after / before",
            ],
            [
                [
                    r["shape"],
                    f"{r['size_mib']} MiB",
                    r["requests_each"],
                    ", ".join(f"{m}: {s}" for m, s in r["statuses"].items()),
                    r["old_ms"],
                    r["new_ms"],
                    r["ratio_new_over_old"],
                ]
                for r in payload["end_to_end"]
            ],
        ),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--before", default="8ceb006", help="commit whose peek is 'before'")
    parser.add_argument("--name", default=NAME, help="results file name")
    args = parser.parse_args()
    plan = {
        "before": args.before,
        "sizes_mib": [1, 16],
        "reps": 5 if args.quick else 21,
        "rounds": 2 if args.quick else 4,
        "requests_scale": 0.2 if args.quick else 1.0,
    }
    rng = random.Random(20261204)
    sizes = [s * MIB for s in plan["sizes_mib"]]
    env = environment()
    print("in process ...", flush=True)
    rows = in_process(sizes, plan["reps"], rng)
    print("end to end ...", flush=True)
    e2e = end_to_end(args.before, sizes, plan["rounds"], rng, plan["requests_scale"])
    payload = {"environment": env, "plan": plan, "in_process": rows, "end_to_end": e2e}
    json_path, md_path = write_results(args.name, payload, render(payload))
    print(render(payload))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
