"""Three real gpumux daemons behind a real HAProxy, on loopback, for the fleet tier.

Owns: writing each node's config (own ports, agent and admin ports, state dir and fake
GPU), starting the daemons together, writing the fleet file, generating haproxy.cfg with
the real CLI (`gpumux fleet haproxy-config`), checking it with `haproxy -c`, starting
HAProxy and waiting until every agent has answered; then chat through the front with the
real openai SDK (reporting which node answered), the nodes' bring-ups from their logs, and
tearing everything down (a node the test SIGKILLed leaves orphans, which are killed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from tests.support.daemon import RunningDaemon, daemon_config, start_daemon
from tests.support.haproxy import Haproxy, check_config, running_haproxy
from tests.support.ports import free_port

NODES = ("n1", "n2", "n3")
CHECK_INTERVAL_MS = 200
STATS_SOCKET = "haproxy.sock"
#: States a model enters when a node brings it up (a cold start, or a wake/restore).
BRING_UP_STATES = frozenset({"starting", "waking"})


@dataclass
class RunningFleet:
    nodes: dict[str, RunningDaemon]
    fleet_path: Path
    haproxy_config: Path
    haproxy: Haproxy
    killed: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        port: int = json.loads(self.fleet_path.read_text())["port"]
        return port

    def admin_url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.nodes[node].config['admin_port']}"

    def sdk(self, timeout: float = 60, base_url: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=(base_url or self.url) + "/v1",
            api_key="unused",
            max_retries=0,
            timeout=timeout,
        )

    def bring_ups(self, model: str) -> list[tuple[str, str]]:
        """(node, state) for every time a node started or woke `model`, from the logs."""
        return [
            (name, event["after"])
            for name, daemon in self.nodes.items()
            for event in daemon.log_events()
            if event.get("event") == "state_changed"
            and event.get("model") == model
            and event.get("after") in BRING_UP_STATES
        ]

    def kill(self, node: str) -> None:
        """SIGKILL one node's daemon (its backends are orphaned; teardown kills them)."""
        daemon = self.nodes[node]
        daemon.descendants()  # remember them for teardown
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait(timeout=10)
        self.killed.add(node)


def chat_via(sdk: openai.OpenAI, model: str, **extra: Any) -> tuple[str, str]:
    """One non-streamed chat completion; (node that answered, its text)."""
    raw = sdk.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=extra.pop("max_tokens", 4),
        **extra,
    )
    reply = raw.parse()
    content = reply.choices[0].message.content
    assert reply.model == model
    assert content
    return raw.headers["x-gpumux-node"], content


def node_configs(
    tmp: Path, models_by_node: dict[str, dict[str, dict[str, Any]]], **top: Any
) -> dict[str, dict[str, Any]]:
    """One gpumux config per node, each with its own ports, state dir and fake GPU."""
    configs = {}
    for name, models in models_by_node.items():
        config = daemon_config(
            tmp / name, models, agent_port=free_port(), admin_port=free_port(), **top
        )
        config["max_request_body_bytes"] = 1024 * 1024
        configs[name] = config
    return configs


def write_fleet(tmp: Path, configs: dict[str, dict[str, Any]], port: int | None = None) -> Path:
    """Node configs under tmp/<node>/gpumux.json and the fleet file naming them."""
    nodes = []
    for name, config in configs.items():
        (tmp / name).mkdir(parents=True, exist_ok=True)
        (tmp / name / "gpumux.json").write_text(json.dumps(config))
        nodes.append({"name": name, "address": "127.0.0.1", "config": f"{name}/gpumux.json"})
    fleet = {
        "port": port or free_port(),
        "bind": "127.0.0.1",
        "nodes": nodes,
        "check_interval_ms": CHECK_INTERVAL_MS,
        "stats_socket": STATS_SOCKET,  # relative: each HAProxy's own working directory
    }
    path = tmp / "fleet.json"
    path.write_text(json.dumps(fleet))
    return path


def generate(fleet_path: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """The real CLI: `gpumux fleet haproxy-config FLEET.json --out FILE`."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gpumux",
            "fleet",
            "haproxy-config",
            str(fleet_path),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def generated_config(tmp: Path, fleet_path: Path) -> Path:
    out = tmp / "haproxy.cfg"
    result = generate(fleet_path, out)
    assert result.returncode == 0, result.stderr
    checked = check_config(out)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return out


@contextmanager
def running_nodes(
    tmp: Path, configs: dict[str, dict[str, Any]], env: dict[str, str] | None = None
) -> Iterator[dict[str, RunningDaemon]]:
    """Every node's daemon, started together; stopped (orphans of killed ones killed)."""
    daemons = {name: start_daemon(tmp / name, config, env) for name, config in configs.items()}
    try:
        for daemon in daemons.values():
            daemon.wait_ready()
        yield daemons
    finally:
        for daemon in daemons.values():
            daemon.descendants()
            if daemon.process.poll() is None:
                daemon.process.send_signal(signal.SIGTERM)
        leftovers = []
        for daemon in daemons.values():
            with suppress(subprocess.TimeoutExpired):
                daemon.process.wait(timeout=30)
            leftovers += daemon.survivors(timeout=2.0)
        for pid in leftovers:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextmanager
def running_fleet(
    tmp: Path, configs: dict[str, dict[str, Any]], env: dict[str, str] | None = None
) -> Iterator[RunningFleet]:
    """The nodes of `configs` (see `node_configs`) behind a generated, checked HAProxy."""
    fleet_path = write_fleet(tmp, configs)
    haproxy_config = generated_config(tmp, fleet_path)
    with ExitStack() as stack:
        nodes = stack.enter_context(running_nodes(tmp, configs, env))
        haproxy = stack.enter_context(running_haproxy(haproxy_config, tmp / "front", STATS_SOCKET))
        haproxy.wait_agents()
        yield RunningFleet(nodes, fleet_path, haproxy_config, haproxy)
