"""Routing through a real HAProxy built by `gpumux fleet haproxy-config` over three real nodes.

One fleet serves this module (starting three daemons and HAProxy is most of the cost);
each test uses its own model, and every node's fake GPU holds all of them at once, so no
test evicts another's model. The node that answered comes from the front's
`X-Gpumux-Node` header and is cross-checked against the nodes' own logs.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.client import get_json, post_json
from tests.support.daemon import mock_model
from tests.support.fleet import STATS_SOCKET, RunningFleet, chat_via, node_configs, running_fleet
from tests.support.haproxy import running_haproxy
from tests.support.waits import wait_until

pytestmark = pytest.mark.fleet

#: A third of the fake GPU each, so every model fits on every node at once.
SMALL = ["--gpu-memory-utilization", "0.3"]
#: A cold start long enough that a whole burst arrives while it is under way.
SLOW_START = [*SMALL, "--mock-startup-secs", "1.0"]


def models_by_node() -> dict[str, dict[str, dict[str, Any]]]:
    everywhere = ("warm", "burst", "twin")
    return {
        "n1": {m: mock_model(extra_args=SLOW_START) for m in everywhere},
        "n2": {m: mock_model(extra_args=SLOW_START) for m in everywhere},
        "n3": {m: mock_model(extra_args=SLOW_START) for m in (*everywhere, "only3")},
    }


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    with running_fleet(tmp, node_configs(tmp, models_by_node())) as running:
        yield running


def burst(fleet: RunningFleet, model: str, count: int) -> list[str]:
    """`count` concurrent requests, each on its own connection; the node of each answer."""

    def one(_: int) -> str:
        with fleet.sdk() as sdk:
            return chat_via(sdk, model)[0]

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_a_model_warm_on_node_2_is_served_by_node_2(fleet: RunningFleet) -> None:
    assert post_json(fleet.admin_url("n2") + "/api/models/warm/wake", {}, timeout=30)["ok"]
    fleet.haproxy.wait_state("model_warm/n2", "UP")  # its agent says awake
    assert set(burst(fleet, "warm", 20)) == {"n2"}
    with fleet.sdk() as sdk:
        assert {chat_via(sdk, "warm")[0] for _ in range(10)} == {"n2"}
    # Asleep on node 2 still beats cold elsewhere: the wake happens where it is cheap.
    assert post_json(fleet.admin_url("n2") + "/api/models/warm/evict", {}, timeout=30)["ok"]
    wait_until(
        lambda: (
            get_json(fleet.admin_url("n2") + "/api/node")["models"]["warm"]["state"] == "sleeping"
        ),
        what="warm asleep on n2",
    )
    fleet.haproxy.wait_state("model_warm/n2", "DRAIN")
    fleet.haproxy.wait_state("model_warm/n2.asleep", "UP")
    assert set(burst(fleet, "warm", 10)) == {"n2"}
    assert [node for node, _ in fleet.bring_ups("warm")] == ["n2", "n2"]  # start, then wake


def test_a_model_only_on_node_3_is_only_served_by_node_3(fleet: RunningFleet) -> None:
    assert set(burst(fleet, "only3", 8)) == {"n3"}
    with fleet.sdk() as sdk:
        assert {chat_via(sdk, "only3")[0] for _ in range(5)} == {"n3"}
    assert fleet.bring_ups("only3") == [("n3", "starting")]
    for node in ("n1", "n2"):  # never asked: they would have answered 404
        assert "only3" not in fleet.nodes[node].log_text()


def test_twenty_concurrent_requests_for_a_cold_model_bring_it_up_once(
    fleet: RunningFleet,
) -> None:
    assert not fleet.bring_ups("burst")
    served = burst(fleet, "burst", 20)
    assert len(set(served)) == 1, served
    assert fleet.bring_ups("burst") == [(served[0], "starting")]


def test_two_haproxy_instances_from_one_config_route_alike(
    fleet: RunningFleet, tmp_path: Path
) -> None:
    """A second HAProxy from the same file shares the port (SO_REUSEPORT): each client
    connection lands on either; both send the cold burst to the same node, once."""
    with running_haproxy(fleet.haproxy_config, tmp_path / "second", STATS_SOCKET) as second:
        second.wait_agents()
        assert second.stat() == fleet.haproxy.stat()  # the same view of the fleet
        served = burst(fleet, "twin", 20)
        assert len(set(served)) == 1, served
        assert fleet.bring_ups("twin") == [(served[0], "starting")]
        for front in (fleet.haproxy, second):
            lines = [line for line in front.request_lines() if '"twin"' in line]
            assert lines, "the kernel gave one instance every connection"
            assert all(f"model_twin/{served[0]}" in line for line in lines), lines


def test_front_answers_unknown_models_health_and_the_fleets_model_list(
    fleet: RunningFleet,
) -> None:
    with fleet.sdk() as sdk:
        with pytest.raises(openai.NotFoundError) as missing:
            chat_via(sdk, 'no"such')
        listed = {m.id for m in sdk.models.list()}
    error = missing.value.body
    assert isinstance(error, dict)
    assert error["code"] == "model_not_found"
    assert error["message"] == 'The model `no"such` does not exist.'
    assert listed == {"warm", "burst", "twin", "only3"}  # the union: only3 is on n3 alone
    with urllib.request.urlopen(fleet.url + "/health", timeout=5) as response:
        assert json.loads(response.read()) == {"status": "ok"}
