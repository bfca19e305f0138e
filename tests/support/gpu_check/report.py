"""The check's results as `gpu-check.json` and `gpu-check.md`, rewritten after every phase.

Owns: the Markdown layout (verdicts, tests/gpu per mode, one row per eviction strategy with
each eviction's and wake's seconds and GB/s beside the pinned copy of the same run, the
reference copies, GPU memory), and writing both files atomically so a run cut short
still leaves what it had.
Does not: measure or judge; the numbers and verdicts arrive in the `results` dict.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

GB = 1e9
REFERENCE_ROWS = (
    ("pinned device→host", "pinned_d2h"),
    ("pinned host→device", "pinned_h2d"),
    ("pageable device→host", "pageable_d2h"),
    ("pageable host→device", "pageable_h2d"),
    ("fresh pinned allocation", "pin_fresh"),
    ("pinned allocation from torch's cache", "pin_cached"),
)
REFERENCE_KEYS = tuple(key for _label, key in REFERENCE_ROWS)


def _secs(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values) or "—"


def _rates(nbytes: int, values: list[float]) -> str:
    if not nbytes:
        return "— (frees only)"
    return ", ".join(f"{nbytes / v / GB:.1f}" for v in values if v > 0) or "—"


def _vs(nbytes: int, values: list[float], reference: float | None) -> str:
    if not nbytes or not values or not reference:
        return "—"
    return f"{nbytes / min(values) / reference:.2f}×"


def _strategies(results: dict[str, Any]) -> list[str]:
    ref = results.get("reference") or {}
    d2h, h2d = ref.get("pinned_d2h_bytes_per_s"), ref.get("pinned_h2d_bytes_per_s")
    lines = [
        "| model | eviction | evict s | evict GB/s | best ÷ pinned D2H | wake s | wake GB/s "
        "| best ÷ pinned H2D | GB each way | GPU held while evicted | checksums |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    held = results.get("held_while_evicted", {})
    for alias, t in results.get("strategies", {}).items():
        sums = results.get("checksums", {}).get(alias, [])
        moved = f"{t['evict_bytes'] / GB:.1f} / {t['wake_bytes'] / GB:.1f}"
        lines.append(
            f"| {alias} | {t['eviction']} | {_secs(t['evict_secs'])} "
            f"| {_rates(t['evict_bytes'], t['evict_secs'])} "
            f"| {_vs(t['evict_bytes'], t['evict_secs'], d2h)} | {_secs(t['wake_secs'])} "
            f"| {_rates(t['wake_bytes'], t['wake_secs'])} "
            f"| {_vs(t['wake_bytes'], t['wake_secs'], h2d)} | {moved} "
            f"| {held.get(alias, 0) / GB:.2f} GB | {len(set(sums))} distinct of {len(sums)} |"
        )
    return lines


#: The backends' own timings (torch mode), by operation: what each one is.
BACKEND_OPS = {
    "load_file": "cold start: weights file → GPU (page cache, pageable)",
    "write_file": "first start: GPU → weights file",
    "pin_host": "level 1: pinned host allocation",
    "offload": "level 1: GPU → pinned host copy",
    "onload": "wake: allocate + pinned host → GPU copy",
    "reload_file": "reload_weights: weights file → GPU",
}


def _backend_ops(ops_by_model: dict[str, Any]) -> list[str]:
    lines = ["| model | operation | s (each) | GB/s (each) |", "|---|---|---|---|"]
    for alias, ops in ops_by_model.items():
        for op, label in BACKEND_OPS.items():
            mine = [o for o in ops or [] if o["op"] == op]
            if mine:
                secs = ", ".join(f"{o['secs']:.4f}" for o in mine)
                rates = ", ".join(f"{o['bytes'] / o['secs'] / GB:.1f}" for o in mine if o["secs"])
                lines.append(f"| {alias} | {label} | {secs} | {rates} |")
    return lines if len(lines) > 2 else ["No backend timings (the dry run has no device)."]


def _reference(ref: dict[str, Any]) -> list[str]:
    if not ref or "error" in ref:
        return [f"Not measured: {ref.get('error', 'not run') if ref else 'not run'}."]
    lines = [f"{ref['bytes'] / GB:.2f} GB each, one process, this run:", "",
             "| copy | s | GB/s |", "|---|---|---|"]  # fmt: skip
    for label, key in REFERENCE_ROWS:
        lines.append(
            f"| {label} | {ref[key + '_secs']:.4f} | {ref[key + '_bytes_per_s'] / GB:.1f} |"
        )
    return lines


def _tests(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| mode | status | tests | note |", "|---|---|---|---|"]
    for row in rows:
        cases = ", ".join(f"{c['test'].split('::')[-1]}: {c['outcome']}" for c in row["cases"])
        note = row.get("reason", "")
        if "suspend" in row:
            s = row["suspend"]
            note = (
                f"suspend {s['suspend_bytes_per_s'] / GB:.1f} GB/s "
                f"({s['suspend_vs_pinned_d2h']:.2f}× pinned), resume "
                f"{s['resume_bytes_per_s'] / GB:.1f} GB/s ({s['resume_vs_pinned_h2d']:.2f}×), "
                f"{s['bytes'] / GB:.1f} GB"
            )
        lines.append(f"| {row['mode']} | {row['status']} | {cases or '—'} | {note} |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    verdict = {True: "PASS", False: "FAIL", None: "not run"}
    out = [
        f"# gpu-check: {verdict[results.get('ok')]}", "",
        f"{machine.get('gpu', '?')}, driver {machine.get('driver', '?')}, "
        f"{machine.get('total_bytes', 0) / GB:.1f} GB; torch {machine.get('torch', '?')}; "
        f"Python {machine.get('python', '?')}; {results.get('duration_secs', 0):.0f} s in all.",
        "", "| check | result | detail |", "|---|---|---|",
    ]  # fmt: skip
    out += [
        f"| {c['check']} | {verdict[c['ok']]} | {c['detail']} |" for c in results.get("checks", [])
    ]
    out += ["", "## tests/gpu", "", *_tests(results.get("gpu_tests", []))]
    out += ["", "## Switches through the daemon (NVML probe)", ""]
    out += [results.get("plan_note", ""), "", *_strategies(results)]
    out += ["", "Inside the backends (each mock times its own device work):", ""]
    out += _backend_ops(results.get("backend_ops") or {})
    out += ["", "## Reference copies", "", *_reference(results.get("reference") or {}), ""]
    return "\n".join(out)


def write(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("gpu-check.json", json.dumps(results, indent=1, default=str)),
        ("gpu-check.md", markdown(results)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)
