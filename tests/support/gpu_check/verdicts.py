"""The check's verdicts: each one a row with pass, fail or "not run" and why.

Owns: the rules — tests/gpu in each mode, every strategy evicted and woken at least
twice with every switch ok, every answer a 200 with the same weights checksum per model,
NVML never above the card, a clean exit on SIGTERM with nothing left behind (processes
or GPU memory), the time budget, and the CRIU row's prerequisites.
Does not: measure anything; it reads what the other phases put in the results.
"""

from __future__ import annotations

from typing import Any

MIN_SWITCHES = 2
GB = 1e9


def row(check: str, ok: bool | None, detail: str) -> dict[str, Any]:
    return {"check": check, "ok": ok, "detail": detail}


def gpu_test_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        ok = None if r["status"] == "not run" else r["status"] == "passed"
        cases = f"{sum(c['outcome'] == 'passed' for c in r['cases'])}/{len(r['cases'])} passed"
        out.append(row(f"tests/gpu, {r['mode']} mode", ok, r.get("reason") or cases))
    return out


def switch_rows(results: dict[str, Any], fake_gpu: bool) -> list[dict[str, Any]]:
    strategies = results.get("strategies", {})
    counts = {a: (len(t["evict_secs"]), len(t["wake_secs"])) for a, t in strategies.items()}
    few = {a: c for a, c in counts.items() if min(c) < MIN_SWITCHES}
    detail = ", ".join(f"{a}: {e} evictions/{w} wakes" for a, (e, w) in counts.items())
    out = [
        row(
            "every strategy evicted and woken twice or more",
            bool(counts) and not few,
            detail or "no switch happened",
        )
    ]
    bad = {a: t["not_ok"] for a, t in strategies.items() if t["not_ok"]}
    out.append(row("every switch finished ok", not bad, str(bad) if bad else "all ok"))
    answers = results.get("answers", [])
    failed = [a for a in answers if a["status"] != 200]
    out.append(
        row(
            "every request answered 200",
            bool(answers) and not failed,
            f"{len(answers) - len(failed)}/{len(answers)}",
        )
    )
    sums = results.get("checksums", {})
    differ = {a: sorted(set(v)) for a, v in sums.items() if len(set(v)) != 1 or None in v}
    what = "answer text" if fake_gpu else "weights checksum (computed on the GPU)"
    out.append(
        row(
            f"same {what} on every answer per model",
            bool(sums) and not differ,
            str(differ) if differ else f"{sum(map(len, sums.values()))} answers",
        )
    )
    return out


def memory_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    gpu = results.get("gpu_memory", {})
    total, peak = gpu.get("total_bytes", 0), gpu.get("peak_used_bytes", 0)
    out = [
        row(
            "GPU memory never above the card",
            bool(gpu.get("samples")) and peak <= total,
            f"peak {peak / GB:.2f} of {total / GB:.2f} GB over {gpu.get('samples', 0)} samples",
        )
    ]
    daemon = results.get("daemon", {})
    code = daemon.get("exit_code")
    out.append(row("daemon exits 0 on SIGTERM", code == 0, f"exit code {code}"))
    left, held = daemon.get("survivors", []), daemon.get("gpu_leftovers", {})
    out.append(
        row(
            "nothing left behind",
            not left and not held,
            f"processes {left or 'none'}, GPU memory held by {held or 'no pid'}",
        )
    )
    if daemon.get("error"):
        out.append(row("daemon phase ran to the end", False, daemon["error"]))
    return out


def verdict(checks: list[dict[str, Any]]) -> bool:
    return all(c["ok"] is not False for c in checks)
