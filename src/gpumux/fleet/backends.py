"""The generated haproxy.cfg's backends: every node once, and one backend per model.

Owns: the `nodes` backend (one health-checked server per node: the check all of the
node's model entries track, and where requests naming no model go) and each model's
backend — per node four server entries in nested tiers (awake, asleep, cold, queue)
whose state and weight the node's agent sets — with a comment above every directive.
Does not: write the frontend (`haproxy`) or decide tiers' meaning (`agent` does).
Pure.

Why four entries per node: HAProxy has two tiers of servers (active, backup) and uses
only the first usable backup unless told otherwise. Active entries are the awake tier,
balanced by least connections. The backups list every node's asleep entry, then every
node's cold entry, then every node's queue entry (each group in the model's preferred
node order), so "the first usable backup" is a node where the model sleeps, else one
that can start it without evicting a busy model, else one where its request can wait.
Tiers nest (awake ⊂ asleep ⊂ cold ⊂ queue): as a model comes up, a node's warmer entries
turn usable while its colder ones stay usable, so HAProxy never sees a gap in which a
second node looks best; a burst for a cold model goes to one node and wakes it once.
"""

from __future__ import annotations

from gpumux.fleet.agent import Tier
from gpumux.fleet.plan import FleetPlan, PlannedModel, PlannedNode
from gpumux.fleet.sections import Section

NODES_BACKEND = "nodes"
#: Servers' configured weight; the agent's `N%` scales it (1..100, never rounding to 0).
SERVER_WEIGHT = 100


def nodes_backend(plan: FleetPlan) -> Section:
    interval = plan.fleet.check_interval_ms
    section = Section(
        f"backend {NODES_BACKEND}",
        ("Every node once: the health check each node's model entries track, and the",
         "backend for requests that name no model (a node answers them as gpumux would)."),
    )  # fmt: skip
    section.add("balance leastconn", "The node with the fewest requests in flight.")
    section.add(
        "option httpchk GET /health",
        "Ask each node's gpumux for /health: 200 while it serves, 503 once it shuts down.",
    )
    section.add("http-check expect status 200", "Only a 200 counts as up.")
    section.add(
        f"default-server inter {interval}ms fastinter {plan.fast_check_ms}ms fall 2 rise 2",
        f"Check every {interval} ms, {plan.fast_check_ms} ms after a failure; 2 failures mark a\n"
        "node down (so a dead node is down within one interval and a bit), 2 successes up.",
    )
    for node in plan.nodes:
        section.add(
            f"server {node.name} {node.address}:{node.port} check",
            "One server per node: its gpumux proxy." if node is plan.nodes[0] else "",
        )
    return section


def model_backend(plan: FleetPlan, model: PlannedModel) -> Section:
    interval = plan.fleet.check_interval_ms
    section = Section(
        f"backend {model.backend}",
        (f"Model `{model.name}` on {', '.join(n.name for n in model.nodes)}.",),
    )
    section.add(
        "balance leastconn",
        "Among nodes where the model is awake: fewest requests in flight per unit of weight\n"
        "(the agent lowers the weight of a saturated node).",
    )
    section.add(
        f"default-server weight {SERVER_WEIGHT} disabled agent-check agent-inter {interval}ms",
        "Every entry starts in maintenance and turns usable on its agent's first answer\n"
        f"(asked every {interval} ms), so a fresh HAProxy never guesses.",
    )
    order = ", ".join(n.name for n in model.preferred)
    for tier in Tier:
        nodes = model.nodes if tier is Tier.AWAKE else model.preferred
        for node in nodes:
            why = _TIER_WHY[tier].format(order=order) if node is nodes[0] else ""
            section.add(_server(model, node, tier), why)
    return section


_TIER_WHY = {
    Tier.AWAKE: "Active entries: usable while the model is awake or coming up on the node.",
    Tier.ASLEEP: "Backups, tried in this order ({order}: the model's home node first):\n"
    "awake or asleep on the node, and it can come up there without evicting a pinned\n"
    "or busy model. The first usable backup takes every request.",
    Tier.COLD: "Then: the node can start it without evicting a pinned or busy model.",
    Tier.QUEUE: "Last: the node serves it but must first drain a busy model; the request\n"
    "waits there (the node's policy decides when) rather than being refused.",
}


def _server(model: PlannedModel, node: PlannedNode, tier: Tier) -> str:
    name = node.name if tier is Tier.AWAKE else f"{node.name}.{tier.value}"
    backup = "" if tier is Tier.AWAKE else " backup"
    return (
        f"server {name} {node.address}:{node.port}{backup} track {NODES_BACKEND}/{node.name} "
        f'agent-addr {node.address} agent-port {node.agent_port} agent-send "{model.name} '
        f'{tier.value}\\n"'
    )
