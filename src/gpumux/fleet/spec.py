"""The fleet file: which gpumux nodes sit behind one HAProxy, and whether they can.

Owns: the schema of FLEET.json (design §8: `{"port", "nodes": [{"name", "address",
"config"}]}`, plus optional `bind`, `check_interval_ms`, `stats_socket` and
`server_state_file`), resolving
each node's `config` path (relative to the fleet file), and the cross-checks between
the fleet file and the nodes' own configs that a generated haproxy.cfg depends on —
every node runs the agent, HAProxy can reach its proxy and agent, names are safe to
write into haproxy.cfg — reported all at once.
Does not: read files (the CLI loads the fleet file and each node's config) or write
haproxy.cfg (`haproxy`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpumux.core.config import Config
from gpumux.core.config_rules import is_loopback

#: Node names become HAProxy server names with a `.tier` suffix: no dots of their own.
NODE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Model names are written into haproxy.cfg (ACL values, JSON answers): no quotes,
#: spaces, backslashes or `#`. Covers names like `Qwen/Qwen2.5-7B-Instruct` or `llama3:8b`.
MODEL_NAME = re.compile(r"[A-Za-z0-9._:/@+=-]{1,200}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FleetNode(_Strict):
    name: str
    address: str = Field(min_length=1, description="Where HAProxy reaches the node.")
    config: str = Field(min_length=1, description="The node's gpumux config file.")


class FleetFile(_Strict):
    port: int = Field(default=3000, ge=1, le=65535, strict=True)
    bind: str = Field(default="0.0.0.0", description="Address HAProxy listens on.")
    nodes: list[FleetNode] = Field(min_length=1)
    check_interval_ms: int = Field(
        default=1000, ge=50, le=60000, description="Health and agent check interval."
    )
    stats_socket: str | None = Field(
        default=None, description="Path of HAProxy's runtime API socket (level operator)."
    )
    server_state_file: str | None = Field(
        default=None,
        description="Where a reload finds the agents' last answers (dumped just before it).",
    )


class FleetProblems(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def parse_fleet(raw: object) -> FleetFile:
    """Validate a decoded fleet file; raise FleetProblems listing every schema error."""
    try:
        return FleetFile.model_validate(raw)
    except ValidationError as exc:
        errors = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "(top level)"
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            errors.append(f"{where}: {message}")
        raise FleetProblems(errors) from None


def config_path(fleet_path: Path, node: FleetNode) -> Path:
    """A node's config path; a relative one is relative to the fleet file's directory."""
    path = Path(node.config)
    return path if path.is_absolute() else fleet_path.parent / path


def fleet_errors(fleet: FleetFile, configs: Mapping[str, Config]) -> list[str]:
    """Every reason the generated haproxy.cfg could not route as documented."""
    return list(_fleet_errors(fleet, configs))


def _fleet_errors(fleet: FleetFile, configs: Mapping[str, Config]) -> Iterator[str]:
    seen_names: set[str] = set()
    seen_endpoints: dict[tuple[str, int], str] = {}
    for node in fleet.nodes:
        where = f"nodes.{node.name}"
        if not NODE_NAME.fullmatch(node.name):
            yield f"{where}: a node name is 1-64 of A-Z a-z 0-9 _ -"
        if node.name in seen_names:
            yield f"{where}: the name is used twice"
        seen_names.add(node.name)
        config = configs[node.name]
        endpoint = (node.address, config.port)
        if endpoint in seen_endpoints:
            yield f"{where}: {node.address}:{config.port} is also node {seen_endpoints[endpoint]}"
        seen_endpoints.setdefault(endpoint, node.name)
        if config.agent_port is None:
            yield f"{where}: its config has no agent_port (HAProxy asks the agent for weights)"
        for field, host in (("host", config.host), ("agent_host", config.agent_host)):
            if is_loopback(host) and not is_loopback(node.address):
                yield (
                    f"{where}: {field} {host} is loopback, so HAProxy cannot reach it at "
                    f"{node.address}"
                )
        for model in config.models:
            if not MODEL_NAME.fullmatch(model):
                yield (
                    f"{where}: model name {model!r} cannot be written into haproxy.cfg "
                    "(allowed: A-Z a-z 0-9 . _ : / @ + = -)"
                )
