"""The report of `bench/compare.py`: derived ratios, the issue's targets, and Markdown.

Owns: what each proxy adds over direct (latency, requests/s), gpumux's CPU per request
as a fraction of gpumux-before's, the two targets of issue 16 checked at 64 streaming
clients, and the Markdown written beside the JSON.
Does not: measure (compare.py does); it reads only the JSON-ready payload.
"""

from __future__ import annotations

import math
from typing import Any

from bench.common import environment_lines, fmt, markdown_table, ratio

MODES = ("direct", "gpumux-before", "gpumux", "nginx", "litellm")
PROXIES = MODES[1:]
CPU_TARGET = 0.5  # gpumux / gpumux-before, CPU per request at 64 streaming clients
RPS_TARGET = 0.8  # gpumux / direct, requests/s at 64 streaming clients


def own_backend(mode: str) -> str:
    return "backend-before" if mode == "gpumux-before" else "backend"


def derive(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per proxy and (clients, stream): what it adds over direct; gpumux's CPU vs before."""
    index = {(c["mode"], c["concurrency"], c["stream"]): c for c in cells}
    rows = []
    for cell in cells:
        direct = index[("direct", cell["concurrency"], cell["stream"])]
        if cell["mode"] == "direct" or not direct["requests"] or not cell["requests"]:
            continue
        before = index[("gpumux-before", cell["concurrency"], cell["stream"])]
        row = {
            "mode": cell["mode"],
            "concurrency": cell["concurrency"],
            "stream": cell["stream"],
            "added_p50_ms": round(cell["latency_ms"]["p50"] - direct["latency_ms"]["p50"], 3),
            "added_p99_ms": round(cell["latency_ms"]["p99"] - direct["latency_ms"]["p99"], 3),
            "rps_ratio": round(ratio(cell["rps"], direct["rps"]), 4),
            "proxy_cpu_ms_per_request": cell["cpu_ms_per_request"].get(cell["mode"]),
        }
        if cell["mode"] == "gpumux":
            mine = cell["cpu_ms_per_request"].get("gpumux", math.nan)
            theirs = before["cpu_ms_per_request"].get("gpumux-before", math.nan)
            row["cpu_vs_before"] = round(ratio(mine, theirs), 4)
        rows.append(row)
    return rows


def check_targets(derived: list[dict[str, Any]]) -> list[dict[str, Any]]:
    row = _find(derived, "gpumux", 64, True)
    cpu = row["cpu_vs_before"] if row else None
    rps = row["rps_ratio"] if row else None
    return [
        {
            "target": "gpumux CPU per request at 64 streaming clients <= "
            f"{CPU_TARGET:g} x gpumux-before's",
            "value": cpu,
            "met": cpu <= CPU_TARGET if cpu is not None else None,
        },
        {
            "target": f"gpumux requests/s at 64 streaming clients >= {RPS_TARGET:.0%} of direct",
            "value": rps,
            "met": rps >= RPS_TARGET if rps is not None else None,
        },
    ]


def _find(
    derived: list[dict[str, Any]], mode: str, conc: int, stream: bool
) -> dict[str, Any] | None:
    return next(
        (
            d
            for d in derived
            if d["mode"] == mode and d["concurrency"] == conc and d["stream"] is stream
        ),
        None,
    )


def render(payload: dict[str, Any]) -> str:
    plan, env, placement = payload["plan"], payload["environment"], payload["placement"]
    where = (
        f"load generator on CPU {placement['loadgen']}, backends on {placement['backends']}, "
        f"the proxy under test on {placement['proxies']}"
        if placement
        else "nothing pinned"
    )
    lines = [
        "# gpumux (before and after) vs nginx vs LiteLLM in front of the same mock backend",
        "",
        *environment_lines(env),
        f"- gpumux-before: commit {payload['before']['commit'][:12]} "
        f"(`--before {payload['before']['rev']}`), same interpreter and libraries.",
        f"- Backend: mock_vllm, ttft 0 ms, {plan['tokens_per_sec']:g} tokens/s, max_tokens "
        f"{plan['max_tokens']}; chat completions. nginx {payload['versions']['nginx']} "
        "(1 worker, `proxy_buffering off`, upstream keep-alive); LiteLLM "
        f"{payload['versions']['litellm']} (1 worker, `hosted_vllm/` model).",
        f"- Load: wrk, 1 thread, N connections closed-loop; {plan['rounds']} rounds of "
        f"{plan['round_secs']} s per (mode, clients, stream), mode order rotating each round, "
        f"after a {plan['warmup_secs']} s warm-up per mode. Placement: {where}. Other work on this "
        "shared machine runs on the same CPUs: compare within a run, not across runs.",
        "",
        "## Targets (64 streaming clients)",
        "",
        markdown_table(
            ["target", "value", "met"],
            [
                [t["target"], fmt(t["value"], 3), {True: "yes", False: "no"}.get(t["met"], "–")]
                for t in payload["targets"]
            ],
        ),
        "",
        "## Per mode",
        "",
    ]
    rows = []
    for c in payload["cells"]:
        cpu, system = c["cpu_ms_per_request"], c["system_cpu_ms_per_request"]
        rows.append(
            [
                c["mode"],
                c["concurrency"],
                "yes" if c["stream"] else "no",
                c["requests"],
                c["errors"],
                fmt(c["rps"], 0),
                fmt(c["latency_ms"]["p50"]),
                fmt(c["latency_ms"]["p99"]),
                (
                    f"{fmt(cpu.get(c['mode']), 3)} ({fmt(system.get(c['mode']), 3)})"
                    if c["mode"] != "direct"
                    else "–"
                ),
                fmt(cpu.get(own_backend(c["mode"])), 3),
                fmt(cpu.get("wrk"), 3),
            ]
        )
    lines.append(
        markdown_table(
            [
                "mode",
                "clients",
                "stream",
                "requests",
                "errors",
                "req/s",
                "p50 (ms)",
                "p99 (ms)",
                "proxy CPU (system) ms/req",
                "backend CPU (ms/req)",
                "wrk CPU (ms/req)",
            ],
            rows,
        )
    )
    lines += ["", "## Added over direct (proxy − direct; req/s as a fraction of direct)", ""]
    derived = payload["derived"]
    lines.append(
        markdown_table(
            [
                "clients",
                "stream",
                *(f"{m} +p50 / +p99 (ms)" for m in PROXIES),
                *(f"{m} req/s ratio" for m in PROXIES),
                "gpumux CPU / before",
            ],
            [
                [
                    conc,
                    "yes" if stream else "no",
                    *(
                        f"{fmt(d['added_p50_ms'], 1)} / {fmt(d['added_p99_ms'], 1)}" if d else "–"
                        for d in (_find(derived, m, conc, stream) for m in PROXIES)
                    ),
                    *(
                        fmt(d["rps_ratio"], 2) if d else "–"
                        for d in (_find(derived, m, conc, stream) for m in PROXIES)
                    ),
                    fmt((_find(derived, "gpumux", conc, stream) or {}).get("cpu_vs_before"), 2),
                ]
                for conc in plan["concurrencies"]
                for stream in (False, True)
            ],
        )
    )
    bad = {k: v for k, v in payload["conformance"].items() if not v["ok"]}
    lines += [
        "",
        "Latency is the whole reply (for streams, until the last SSE byte), from wrk's "
        "quantiles merged over rounds. CPU is user+system time during the timed rounds "
        "divided by completed requests (in brackets: its system part, mostly the kernel's "
        "socket work): the proxy's process tree (a gpumux daemon's without the backend it "
        "spawned), the backend's tree, and wrk's own rusage. The kernel "
        "counts CPU in 10 ms ticks, so it is coarse where few requests were sent. "
        "gpumux-before talks to its own backend (identical, same CPU placement).",
        "",
        "Pre-flight (one request per mode and kind): "
        + ("all answered 200 with every token." if not bad else f"failures: {bad}"),
    ]
    return "\n".join(lines)
