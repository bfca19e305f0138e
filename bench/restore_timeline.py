"""The timeline of a CRIU restore as a client waits for it, for bench/real_vllm.py.

Owns: lining up gpumux's `criu_restore_timeline` log event (phases of the restore, with
the wall-clock time it began) with the client's own send and first token, so that every
part of restore-to-first-token is named: the wait before the restore starts
(scheduling), each restore phase, and the time from a healthy tree to the first token
(lease, the proxied request's upstream connection, the first forward pass); and how much
of the image was in the page cache just before the restore (`fincore`).
Does not: run anything but `fincore`, or decide what is slow.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import fmt, markdown_table, summarize

BEFORE = "request → restore begins"
AFTER = "healthy → first token"
HANDOFF = "healthy → scheduler has it ready"
FIRST = "ready → first token"

#: What each phase of gpumux's timeline is (the names `RestoreTimeline` records).
PHASES: Mapping[str, str] = {
    BEFORE: "the proxy queues the request, the scheduler plans the wake",
    "kill": "make sure no older tree of the model runs",
    "log_dir": "create the CRIU log directory",
    "settle": "wait for a dump of the model still being finalised",
    "download": "fetch the image from the object store",
    "verify_ahead": "wait for the same check begun in the background at start",
    "image_checks": "every file present, regular, no symlink, right size; the stamp",
    "sha256": "hash every image file against the manifest",
    "identity": "model, launch, kernel, CRIU and driver match the image",
    "pids_port_free": "the image's pids are free (reaped) and its listening ports can be bound",
    "shm_copy_in": "put the tree's /dev/shm segments back",
    "criu": "`criu restore` itself",
    "adopt": "the restored root becomes a supervised child",
    "attach": "registry, exit callback, log tail",
    "health": "/health until 200 (probes and the pauses between them)",
    AFTER: "state change, lease, upstream connection, first forward pass",
    HANDOFF: "the step's result reaches the scheduler (its `switch_finished` event)",
    FIRST: "lease, proxied request on the pooled connection, vLLM's first forward pass",
}


def sample(
    sent_at: float, first_token: float, event: Mapping[str, Any], ready_at: float | None = None
) -> dict[str, float]:
    """One restore sample's phases, in order, from the client's send to its first token.

    `ready_at` (the wall-clock time of the switch's `switch_finished` event) splits the
    time after the tree is healthy into the scheduler's part and the request's."""
    phases = {str(k): float(v) for k, v in event.get("phases", {}).items()}
    started = float(event["started_at"])
    healthy = started + sum(phases.values())
    end = sent_at + first_token
    if ready_at is None or not healthy <= ready_at <= end:
        return {BEFORE: started - sent_at, **phases, AFTER: end - healthy}
    return {BEFORE: started - sent_at, **phases, HANDOFF: ready_at - healthy, FIRST: end - ready_at}


def logged_at(event: Mapping[str, Any]) -> float | None:
    """The wall-clock time of a gpumux log event (its ISO-8601 `ts`), if it has one."""
    try:
        return datetime.datetime.fromisoformat(str(event["ts"])).timestamp()
    except (KeyError, ValueError):
        return None


def table(samples: Sequence[Mapping[str, float]]) -> str:
    """Markdown: each phase's p50 and mean over `samples`, and its share of the total."""
    names: list[str] = []
    for one in samples:
        names += [n for n in one if n not in names]
    totals = [sum(one.values()) for one in samples]
    total_p50 = summarize(totals).p50
    rows = []
    for name in names:
        values = [one.get(name, 0.0) for one in samples]
        s = summarize(values)
        share = 100 * s.p50 / total_p50 if total_p50 else 0.0
        rows.append(
            [
                name,
                fmt(s.p50 * 1000, 1),
                fmt(s.mean * 1000, 1),
                f"{share:.0f} %",
                PHASES.get(name, ""),
            ]
        )
    t = summarize(totals)
    rows.append(
        ["**send → first token**", fmt(t.p50 * 1000, 1), fmt(t.mean * 1000, 1), "100 %", ""]
    )
    return markdown_table(["phase", "p50 ms", "mean ms", "share of p50", "what"], rows)


def resident_fraction(image: Path) -> float | None:
    """How much of the image's files is in the page cache now (0..1), or None without
    `fincore` (util-linux)."""
    fincore = shutil.which("fincore")
    files = [p for p in image.rglob("*") if p.is_file()]
    if fincore is None or not files:
        return None
    out = subprocess.run(
        [fincore, "--bytes", "--noheadings", "--raw", "--output", "RES,SIZE", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    resident = size = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            resident += int(parts[0])
            size += int(parts[1])
    return resident / size if size else None
