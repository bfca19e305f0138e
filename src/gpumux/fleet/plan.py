"""What the generated haproxy.cfg is made of, derived from the fleet file and node configs.

Owns: `FleetPlan` — the nodes in fleet-file order (where each proxy and agent is reached),
each model with the names a request may use, its backend name, the nodes that serve it
and the order they are tried in for a bring-up, the buffer size (the largest
`max_request_body_bytes` plus room for headers), the timeouts (long enough that a node's
own queue and idle limits answer first), the retry count (enough attempts to outlast
the health checks finding a dead node), and the warnings worth printing (a model
configured differently on two nodes).
Does not: validate (`spec.fleet_errors` runs first) or write text (`haproxy`). Pure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from gpumux.core.config import Config, ModelConfig
from gpumux.fleet.spec import FleetFile

#: Request line and headers on top of the largest body (HAProxy's `tune.maxrewrite` and
#: the header block must fit in the same buffer).
HEADER_ROOM_BYTES = 64 * 1024
#: HAProxy gives up on a node only after that node's own limits would have answered.
TIMEOUT_MARGIN_SECS = 10
#: After one failed health check, the next comes this soon (at most), so a dead node is
#: down within `check_interval + FAST_CHECK_MS`.
FAST_CHECK_MS = 250
#: HAProxy waits a second between two connection attempts (its turn-around timer).
RETRY_TURNAROUND_SECS = 1.0


@dataclass(frozen=True)
class PlannedNode:
    name: str
    address: str
    port: int  # the node's gpumux proxy
    agent_port: int


@dataclass(frozen=True)
class PlannedModel:
    name: str
    names: tuple[str, ...]  # what a request's `model` may say (the name, then aliases)
    backend: str
    nodes: tuple[PlannedNode, ...]  # fleet-file order
    #: The nodes in the order a bring-up tries them: fleet order rotated to start at the
    #: model's home node (the i-th model's is the i-th node, round robin), so cold models
    #: spread over the fleet instead of piling onto its first node.
    preferred: tuple[PlannedNode, ...]


@dataclass(frozen=True)
class FleetPlan:
    fleet: FleetFile
    nodes: tuple[PlannedNode, ...]
    models: tuple[PlannedModel, ...]
    bufsize: int
    fast_check_ms: int
    retries: int  # enough to outlast a dead node's detection
    server_timeout_secs: int
    http_request_timeout_secs: int
    warnings: tuple[str, ...]

    @property
    def all_names(self) -> tuple[str, ...]:
        return tuple(n for m in self.models for n in m.names)


def plan_fleet(fleet: FleetFile, configs: Mapping[str, Config]) -> FleetPlan:
    """The plan for a validated fleet (every node has an agent_port)."""
    nodes = tuple(
        PlannedNode(n.name, n.address, configs[n.name].port, configs[n.name].agent_port or 0)
        for n in fleet.nodes
    )
    by_model: dict[str, list[PlannedNode]] = {}
    first_seen: dict[str, tuple[str, ModelConfig]] = {}
    warnings: list[str] = []
    for node in nodes:
        for alias, model in configs[node.name].models.items():
            by_model.setdefault(alias, []).append(node)
            seen = first_seen.setdefault(alias, (node.name, model))
            if seen[1].model_path != model.model_path:
                warnings.append(
                    f"model {alias}: model_path {seen[1].model_path!r} on {seen[0]} but "
                    f"{model.model_path!r} on {node.name}; HAProxy treats them as one model"
                )
    used: set[str] = set()
    models = tuple(
        PlannedModel(
            name=alias,
            names=(alias, *_aliases(first_seen[alias][1])),
            backend=_backend_name(alias, used),
            nodes=tuple(serving),
            preferred=tuple(serving[index % len(serving) :] + serving[: index % len(serving)]),
        )
        for index, (alias, serving) in enumerate(by_model.items())
    )
    all_configs = list(configs.values())
    fast_check_ms = min(fleet.check_interval_ms, FAST_CHECK_MS)
    detection_secs = (fleet.check_interval_ms + fast_check_ms) / 1000
    return FleetPlan(
        fleet=fleet,
        nodes=nodes,
        models=models,
        bufsize=max(c.max_request_body_bytes for c in all_configs) + HEADER_ROOM_BYTES,
        fast_check_ms=fast_check_ms,
        # The first retry goes at once, each later one a turn-around after the last: the
        # attempts span (retries - 1) turn-arounds, which must outlast the detection.
        retries=math.ceil(detection_secs / RETRY_TURNAROUND_SECS) + 2,
        server_timeout_secs=max(
            round(c.policy.request_timeout_secs + c.supervision.upstream_idle_timeout_secs)
            for c in all_configs
        )
        + TIMEOUT_MARGIN_SECS,
        http_request_timeout_secs=max(60, *(round(c.header_timeout_secs) for c in all_configs)),
        warnings=tuple(warnings),
    )


def _aliases(model: ModelConfig) -> tuple[str, ...]:
    # `aliases` arrives with another change (design §8); until then there are none.
    names = getattr(model, "aliases", None) or ()
    return tuple(str(n) for n in names)


def _backend_name(model: str, used: set[str]) -> str:
    """`model_<name>` with characters HAProxy does not allow in a proxy name replaced."""
    base = "model_" + re.sub(r"[^A-Za-z0-9_.-]", "_", model)
    name, suffix = base, 2
    while name in used:
        name, suffix = f"{base}_{suffix}", suffix + 1
    used.add(name)
    return name
