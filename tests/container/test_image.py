"""The image from deploy/Containerfile, built on the local Debian base, run for real.

`gpumux validate` and `gpumux serve` run inside the image (`buildah run --isolation chroot
--network host`, the image's own CMD and user) on copies of config.example.json with
free loopback ports; the real `openai` SDK drives it from outside: three models, a
switch, a stream. Then SIGTERM, as `docker stop` sends it, and nothing may be left.
"""

from __future__ import annotations

import json
import signal
import socket
import urllib.request
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest

from tests.support.client import http_status
from tests.support.container import ROOT, Container, image_config
from tests.support.ports import free_port
from tests.support.waits import wait_until

# The first test builds the image when scripts/test has not (base cached: ~1 min).
pytestmark = pytest.mark.timeout(600)

CONFIG_IN_IMAGE = "/etc/gpumux/config.json"
STATE_IN_IMAGE = "/var/lib/gpumux"
READY_TIMEOUT_SECS = 60
STOP_TIMEOUT_SECS = 60


def example_config_with_free_ports() -> dict[str, Any]:
    config: dict[str, Any] = json.loads((ROOT / "config.example.json").read_text())
    for key in ("port", "metrics_port", "admin_port"):
        config[key] = free_port()
    for model in config["models"].values():
        model["port"] = free_port()
    return config


def all_ports(config: dict[str, Any]) -> list[int]:
    ports = [config["port"], config["metrics_port"], config["admin_port"]]
    return ports + [model["port"] for model in config["models"].values()]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def switches_into(metrics_url: str, model: str) -> float:
    """gpumux_switches_total summed over every series whose `to` is `model`."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gpumux_switches_total{") and f'to="{model}"' in line
    )


def test_image_config_is_the_deployment_contract(image: str) -> None:
    """CMD serves /etc/gpumux/config.json as a non-root user, state in a volume, the proxy
    and metrics ports exposed, a HEALTHCHECK, no inherited `vllm serve` entrypoint."""
    config = image_config(image)
    assert config["Cmd"] == ["gpumux", "serve", CONFIG_IN_IMAGE]
    assert not config.get("Entrypoint")
    assert config["User"] == "gpumux"
    assert STATE_IN_IMAGE in config["Volumes"]
    assert {"3000/tcp", "9090/tcp"} <= set(config["ExposedPorts"])
    assert config["Healthcheck"]["Test"] == [
        "CMD",
        "/opt/gpumux/bin/python",
        "/opt/gpumux/healthcheck.py",
    ]
    assert config["StopSignal"] == "SIGTERM"
    assert f"STATE_DIRECTORY={STATE_IN_IMAGE}" in config["Env"]


def test_image_carries_criu_and_cuda_bindings_and_keeps_the_base_python_clean(
    container: Container,
) -> None:
    """criu >= 4.2 and cuda-bindings 12.x are installed; gpumux's dependencies live in
    /opt/gpumux, not in the base's Python (on the vLLM image: vLLM's own pins)."""
    probe = (
        "id -u; criu --version | sed -n 's/^Version: *//p'; "
        "/opt/gpumux/bin/python -c 'import cuda.bindings.driver, importlib.metadata as m; "
        'print(m.version("cuda-bindings"))\'; '
        "python3 -c 'import aiohttp' 2>/dev/null && echo base-has-aiohttp || echo base-clean; "
        "command -v gpumux"
    )
    result = container.run(["sh", "-c", probe])
    assert result.returncode == 0, result.stderr
    uid, criu, bindings, base, gpumux = result.stdout.split()
    assert int(uid) != 0
    assert tuple(int(part) for part in criu.split(".")[:2]) >= (4, 2)
    assert bindings.startswith("12.")
    assert tuple(map(int, bindings.split(".")[:2])) >= (12, 8)
    assert base == "base-clean"
    assert gpumux == "/opt/gpumux/bin/gpumux"


def test_validate_inside_the_image(container: Container, tmp_path: Path) -> None:
    """`gpumux validate` accepts the example and lists every problem of a broken copy."""
    good = container.run(
        ["gpumux", "validate", CONFIG_IN_IMAGE],
        volumes={ROOT / "config.example.json": f"{CONFIG_IN_IMAGE}:ro"},
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok" in good.stdout

    broken = json.loads((ROOT / "config.example.json").read_text())
    broken["models"]["medium"]["port"] = broken["models"]["small"]["port"]
    broken["no_such_key"] = True
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    bad = container.run(
        ["gpumux", "validate", CONFIG_IN_IMAGE], volumes={path: f"{CONFIG_IN_IMAGE}:ro"}
    )
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "no_such_key" in bad.stdout + bad.stderr
    assert str(broken["models"]["small"]["port"]) in bad.stdout + bad.stderr


def gpumux_in(container: Container) -> psutil.Process:
    """The one `gpumux serve` process running in the container."""
    found = [
        process
        for process in container.processes()
        if process.cmdline()[:3] == ["/opt/gpumux/bin/python", "/opt/gpumux/bin/gpumux", "serve"]
    ]
    assert len(found) == 1, [process.cmdline() for process in found]
    return found[0]


def state_volume_files(process: psutil.Process) -> dict[str, int]:
    """Files under /var/lib/gpumux as `process` sees them (name -> owner uid), after
    checking that the path is a mount of its own there (the VOLUME), not the image's."""
    mounts = Path(f"/proc/{process.pid}/mountinfo").read_text().splitlines()
    assert any(line.split()[4] == STATE_IN_IMAGE for line in mounts), mounts
    state = Path(f"/proc/{process.pid}/root{STATE_IN_IMAGE}")
    return {path.name: path.stat().st_uid for path in state.rglob("*") if path.is_file()}


def test_serve_in_the_image_three_models_a_switch_a_stream_then_sigterm(
    image: str, container: Container, tmp_path: Path
) -> None:
    config = example_config_with_free_ports()
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    uid = int(container.run(["id", "-u"]).stdout)
    # State goes to the image's VOLUME, which `buildah run` mounts as an anonymous volume
    # (a bind mount onto the same path loses to it at random in buildah 1.28).
    volumes = {config_path: f"{CONFIG_IN_IMAGE}:ro"}
    image_cmd = image_config(image)["Cmd"]
    healthcheck = image_config(image)["Healthcheck"]["Test"][1:]
    url = f"http://127.0.0.1:{config['port']}"
    log_path = tmp_path / "serve.log"

    with log_path.open("ab") as log:
        served = container.start(image_cmd, volumes, log)
    try:
        wait_until(
            lambda: served.poll() is not None or http_status(url + "/health") == 200,
            timeout=READY_TIMEOUT_SECS,
            what="gpumux /health in the container",
        )
        assert served.poll() is None, log_path.read_text()
        gpumux = gpumux_in(container)
        assert gpumux.uids().real == uid != 0

        # The image's HEALTHCHECK command, run in the container as Docker would.
        assert container.run(healthcheck, volumes).returncode == 0

        with openai.OpenAI(
            base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60
        ) as sdk:
            assert {model.id for model in sdk.models.list()} == {"small", "medium", "large"}
            for model in ("small", "medium", "large"):
                reply = sdk.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
                )
                assert reply.model == model
                assert reply.choices[0].message.content
            # One fake 80 GiB GPU at 0.45 each: `large` made one of the others leave.
            metrics = f"http://127.0.0.1:{config['metrics_port']}/metrics"
            assert switches_into(metrics, "large") >= 1

            stream = sdk.chat.completions.create(
                model="small",
                messages=[{"role": "user", "content": "stream please"}],
                max_tokens=8,
                stream=True,
            )
            pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
        assert len(pieces) >= 2
        assert "".join(pieces).strip()

        # Backend logs and the fake GPU ledger in the state volume, owned by the image's user.
        written = state_volume_files(gpumux)
        assert {"small.log", "medium.log", "large.log", "fake-gpu-ledger.json"} <= set(written)
        assert set(written.values()) == {uid}

        assert len(container.processes()) > 3  # gpumux, backends, their EngineCores
        gpumux.send_signal(signal.SIGTERM)
        assert served.wait(timeout=STOP_TIMEOUT_SECS) == 0, log_path.read_text()[-4000:]
    finally:
        if served.poll() is None:
            served.kill()
            served.wait(timeout=10)

    assert container.leftovers(timeout=5) == []
    assert wait_until(
        lambda: all(port_is_free(port) for port in all_ports(config)),
        timeout=5,
        what="every port of the config free again",
    )
    assert '"event": "daemon_stopped"' in log_path.read_text()
    assert container.run(healthcheck, volumes).returncode == 1
