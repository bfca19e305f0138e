"""`haproxy -c` (Debian's HAProxy) accepts what `gpumux fleet haproxy-config` writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.fleet import generate
from tests.support.haproxy import check_config

pytestmark = pytest.mark.fleet


def node(port: int, models: dict[str, int], **top: Any) -> dict[str, Any]:
    return {
        "models": {m: {"model_path": f"org/{m}", "port": p} for m, p in models.items()},
        "port": port,
        "agent_port": port + 10,
        "agent_host": "0.0.0.0",
        **top,
    }


@pytest.mark.parametrize(
    ("nodes", "extra"),
    [
        (
            {
                "gpu-a": node(3000, {"Qwen/Qwen2.5-7B-Instruct": 8001, "llama3:8b": 8002}),
                "gpu_b": node(3000, {"llama3:8b": 8001, "e5.small+v2": 8002}),
                "gpu-c": node(
                    3100, {"Qwen/Qwen2.5-7B-Instruct": 8001}, max_request_body_bytes=2048
                ),
            },
            {
                "stats_socket": "/run/haproxy-gpumux.sock",
                "server_state_file": "/var/lib/haproxy/gpumux.state",
                "bind": "::",
                "check_interval_ms": 2000,
            },
        ),
        ({"solo": node(3000, {"m": 8001})}, {}),
    ],
    ids=["three-nodes", "one-node"],
)
def test_haproxy_accepts_the_generated_file(
    tmp_path: Path, nodes: dict[str, dict[str, Any]], extra: dict[str, Any]
) -> None:
    entries = []
    for i, (name, config) in enumerate(nodes.items()):
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
        entries.append({"name": name, "address": f"10.1.0.{i + 1}", "config": f"{name}.json"})
    fleet = tmp_path / "fleet.json"
    fleet.write_text(json.dumps({"port": 8080, "nodes": entries, **extra}))
    out = tmp_path / "haproxy.cfg"
    generated = generate(fleet, out)
    assert generated.returncode == 0, generated.stderr
    checked = check_config(out)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    warnings = [
        line
        for line in (checked.stdout + checked.stderr).splitlines()
        if "[WARNING]" in line and "server state file" not in line  # none before a reload
    ]
    assert not warnings  # nothing else HAProxy frowns on
