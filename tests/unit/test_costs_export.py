"""`gpumux costs --profile`: learned costs exported, loaded back, and replayed the same.

The daemon side is real where it is cheap: the costs store writes the state directory's
file, and a stdlib HTTP server on loopback answers `/api/status` with the `costs` object
the admin API publishes (`{"ops", "switches", "samples"}`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gpumux.cli.main import main
from gpumux.core.config import Config, EvictionConfig
from gpumux.core.eviction import evict_plan, wake_plan
from gpumux.daemon.costs_store import save_costs
from gpumux.policy.costs import SwitchCosts
from gpumux.scheduler.messages import Operation, OpKind
from gpumux.simulate.cost_profile import H200_VM, load_profile
from gpumux.simulate.profile_costs import ProfileCosts

pytestmark = pytest.mark.unit
OFFLOAD = "offload+keep_running"


def learned() -> SwitchCosts:
    costs = SwitchCosts()
    costs.observe_op("llama", "evict", OFFLOAD, 12.0)
    costs.observe_op("llama", "wake", OFFLOAD, 0.6)
    costs.observe_op("llama", "cold_start", "retain+stop", 41.0)
    costs.observe_op("llama", "evict", "retain+stop", 0.1 + 0.2)  # 0.30000000000000004
    costs.observe_op("llama", "drain", OFFLOAD, 3.0)  # not a step cost: left out
    costs.observe_switch("qwen", "llama", OFFLOAD, 12.6)
    return costs


def export(capsys: pytest.CaptureFixture[str], tmp_path: Path, *argv: str) -> Path:
    assert main(["costs", "--profile", *argv]) == 0
    path = tmp_path / "learned.json"
    path.write_text(capsys.readouterr().out)
    return path


def op_secs(costs: ProfileCosts, kind: OpKind, eviction: str) -> float:
    level = EvictionConfig.parse(eviction)
    steps, resting = evict_plan(level)
    if kind is OpKind.WAKE:
        steps = wake_plan(level.weights, resting, warmup=False)
    op = Operation(1, "llama", kind, steps, level)
    return sum(costs.step_secs(op, step) for step in steps)


def llama_config() -> Config:
    return Config.model_validate(
        {
            "models": {
                "llama": {
                    "model_path": "test/llama",
                    "port": 8100,
                    "extra_args": ["--gpu-memory-utilization", "0.5"],
                }
            },
            "gpu": {"probe": "fake", "fake_capacity_gib": [140]},
        }
    )


def test_exported_costs_load_back_and_charge_exactly_what_was_learned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_costs(tmp_path, learned())
    profile = load_profile(str(export(capsys, tmp_path, "--state-dir", str(tmp_path))))
    assert profile.name == "learned"
    assert profile.models["llama"].seconds == {
        f"evict|{OFFLOAD}": 12.0,
        f"wake|{OFFLOAD}": 0.6,
        "cold_start|retain+stop": 41.0,
        "evict|retain+stop": 0.3,  # rounded to 0.1 ms: a figure people read
    }
    costs = ProfileCosts(profile, llama_config())
    assert op_secs(costs, OpKind.EVICT, OFFLOAD) == pytest.approx(12.0)
    assert op_secs(costs, OpKind.WAKE, OFFLOAD) == pytest.approx(0.6)
    assert op_secs(costs, OpKind.WAKE, "retain+stop") == pytest.approx(41.0)
    # Never measured: the base profile's rates price it.
    assert profile.cuda_suspend_gbps == H200_VM.cuda_suspend_gbps


@pytest.fixture
def admin_api() -> Iterator[str]:
    status = json.dumps({"costs": learned().to_dict(), "models": {}}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/api/status"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(status if found else b"{}")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_admin_api_and_the_state_file_export_the_same_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], admin_api: str
) -> None:
    save_costs(tmp_path, learned())
    from_file = export(capsys, tmp_path, "--state-dir", str(tmp_path)).read_text()
    from_api = export(capsys, tmp_path, "--admin-url", admin_api).read_text()
    assert json.loads(from_api) == json.loads(from_file)


def test_the_exported_profile_drives_simulate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_costs(tmp_path, learned())
    profile = export(capsys, tmp_path, "--state-dir", str(tmp_path))
    config = tmp_path / "config.json"
    config.write_text(llama_config().model_dump_json(exclude_defaults=True))
    argv = ["simulate", str(config), "--workload", "balanced", "--duration", "120", "--json"]
    assert main([*argv, "--cost-profile", str(profile)]) == 0
    (result,) = json.loads(capsys.readouterr().out).values()  # the config's default policy
    assert result["completed"] > 0


def test_the_table_lists_every_learned_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_costs(tmp_path, learned())
    assert main(["costs", "--state-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["MODEL", "OPERATION", "EVICTION", "SECONDS", "SAMPLES"]
    assert ["llama", "evict", OFFLOAD, "12.000", "1"] in [line.split() for line in lines]


def test_nothing_learned_or_a_bad_base_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["costs", "--profile", "--state-dir", str(tmp_path)]) == 1
    assert "no learned costs" in capsys.readouterr().err
    save_costs(tmp_path, learned())
    assert main(["costs", "--profile", "--state-dir", str(tmp_path), "--base", "nope"]) == 2
    assert "neither a built-in profile" in capsys.readouterr().err
