"""bench/compare.py's pure parts: wrk's script and merged quantiles, CPU placement, the
derived ratios and the issue's targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import wrk
from bench.common import chat_body
from bench.compare_cpu import choose_placement
from bench.compare_report import check_targets, derive, render

pytestmark = pytest.mark.unit


def test_the_lua_script_carries_the_body_verbatim(tmp_path: Path) -> None:
    body = chat_body("m", max_tokens=16, stream=True)
    text = wrk.write_script(tmp_path / "s.lua", body).read_text()
    assert f"[==[{body.decode()}]==]" in text
    assert "latency:percentile" in text
    with pytest.raises(ValueError, match="Lua"):
        wrk.write_script(tmp_path / "bad.lua", b'{"x": "]==]"}')


def rounds(*spec: tuple[int, float]) -> list[wrk.Round]:
    """Rounds whose every request took the same time: (requests, seconds)."""
    return [wrk.Round(n, 1.0, 0, (secs,) * wrk.QUANTILES, 0.0) for n, secs in spec]


def test_merged_quantiles_weigh_each_round_by_its_requests() -> None:
    merged = rounds((900, 0.010), (100, 0.100))
    assert wrk.merged_percentile(merged, 50) == 0.010
    assert wrk.merged_percentile(merged, 89) == 0.010
    assert wrk.merged_percentile(merged, 95) == 0.100
    with pytest.raises(ValueError, match="no requests"):
        wrk.merged_percentile(rounds((0, 0.1)), 50)


def test_placement_gives_the_proxy_a_cpu_of_its_own() -> None:
    assert choose_placement([0]) is None
    two = choose_placement([0, 1])
    assert two is not None
    assert (two.loadgen, two.backends, two.proxies) == ({0}, {0}, {1})
    many = choose_placement([2, 3, 5, 7])
    assert many is not None
    assert (many.loadgen, many.backends, many.proxies) == ({2}, {3}, {5})


def cell(mode: str, rps: float, cpu: float, p50: float = 10.0) -> dict[str, Any]:
    return {
        "mode": mode,
        "concurrency": 64,
        "stream": True,
        "requests": 1000,
        "errors": 0,
        "rps": rps,
        "latency_ms": {"p50": p50, "p99": 2 * p50},
        "cpu_ms_per_request": {mode: cpu, "backend": 1.0, "wrk": 0.1},
        "system_cpu_ms_per_request": {mode: cpu / 4},
    }


def test_targets_compare_gpumux_with_before_and_direct() -> None:
    cells = [
        cell("direct", 500, 0.0),
        cell("gpumux-before", 300, 1.0, p50=30),
        cell("gpumux", 450, 0.45, p50=12),
        cell("nginx", 480, 0.3),
        cell("litellm", 50, 15.0),
    ]
    derived = derive(cells)
    mine = next(d for d in derived if d["mode"] == "gpumux")
    assert (mine["rps_ratio"], mine["cpu_vs_before"], mine["added_p50_ms"]) == (0.9, 0.45, 2.0)
    assert [t["met"] for t in check_targets(derived)] == [True, True]
    payload = {
        "plan": {
            "concurrencies": [64],
            "rounds": 1,
            "round_secs": 1,
            "tokens_per_sec": 2000.0,
            "max_tokens": 16,
            "warmup_secs": 1,
        },
        "environment": {
            "cpus_usable": 2,
            "cpu_count": 2,
            "load_average_at_start": [1.0],
            "python": "3.11",
            "implementation": "CPython",
            "aiohttp": "3",
            "platform": "linux",
            "git_commit": "abc",
            "source_digest": "def",
            "started_at": "now",
        },
        "placement": None,
        "before": {"rev": "x", "commit": "0123456789abcdef"},
        "versions": {"nginx": "1", "litellm": "2"},
        "cells": cells,
        "derived": derived,
        "targets": check_targets(derived),
        "conformance": {"gpumux stream": {"ok": True}},
    }
    text = render(payload)
    assert "| gpumux | 64 | yes | 1000 | 0 | 450 |" in text
    assert "0.450 (0.113)" in text
