"""deploy/compose.yaml, parsed and normalised by a real Compose implementation, and the
essentials of a GPU + checkpointing deployment checked on what it understood.

The parser is Debian's `docker-compose` package (scripts/test installs it): the Python
Compose 1.29 on bookworm, the Go Compose v2 on later releases. Both validate the file
against the Compose schema (an unknown key or a wrong type is an error), interpolate
variables and resolve paths without a Docker daemon, which is what `config` needs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.container import ROOT, require

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
GPUMUX_CONFIG = json.loads((DEPLOY / "config.json").read_text())


def compose_config(
    env: dict[str, str], compose_file: Path = COMPOSE
) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("docker-compose")
    require(tool is not None, "docker-compose is not installed (scripts/test installs it)")
    assert tool is not None
    clean = {key: value for key, value in os.environ.items() if key != "GPUMUX_ADMIN_TOKEN"}
    return subprocess.run(
        [tool, "-f", str(compose_file), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**clean, **env},
    )


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    hf_home = tmp_path_factory.mktemp("hf")
    result = compose_config({"GPUMUX_ADMIN_TOKEN": "test-token", "HF_HOME": str(hf_home)})
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of every published port, both syntaxes."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
            continue
        spec = str(port).split("/")[0]
        parts = spec.split(":")
        host_ip = parts[0] if len(parts) == 3 else ""
        found.append((host_ip, int(parts[-2]), int(parts[-1])))
    return found


def bind_sources(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of every bind mount, both syntaxes."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                found[volume["target"]] = volume["source"]
            continue
        source, target = str(volume).split(":")[:2]
        if source.startswith("/"):
            found[target] = source
    return found


def test_the_stack_is_gpumux_prometheus_grafana(parsed: dict[str, Any]) -> None:
    assert set(parsed["services"]) == {"gpumux", "prometheus", "grafana"}
    build = parsed["services"]["gpumux"]["build"]
    assert Path(build["context"]).resolve() == ROOT
    assert build["dockerfile"] == "deploy/Containerfile"
    assert (ROOT / build["dockerfile"]).is_file()


def test_gpumux_gets_the_gpus_and_what_checkpointing_needs(parsed: dict[str, Any]) -> None:
    """The GPU device request, root + CAP_CHECKPOINT_RESTORE + CAP_SYS_PTRACE for CRIU,
    ipc: host, no init process (gpumux reaps its own tree), not privileged."""
    gpumux = parsed["services"]["gpumux"]
    devices = gpumux["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        device["driver"] == "nvidia" and "gpu" in device["capabilities"] for device in devices
    )
    assert {"CHECKPOINT_RESTORE", "SYS_PTRACE"} <= set(gpumux["cap_add"])
    assert str(gpumux["user"]).split(":")[0] == "0"
    assert gpumux["ipc"] == "host"
    assert not gpumux.get("init")
    assert not gpumux.get("privileged")
    assert "network_mode" not in gpumux
    assert gpumux["environment"]["GPUMUX_ADMIN_TOKEN"] == "test-token"
    assert bind_sources(gpumux)["/etc/gpumux/config.json"] == str(DEPLOY / "config.json")
    assert any(
        str(volume).startswith("gpumux-state:/var/lib/gpumux")
        or (isinstance(volume, dict) and volume.get("target") == "/var/lib/gpumux")
        for volume in gpumux["volumes"]
    )


def test_only_the_proxy_is_public_and_model_ports_stay_inside(parsed: dict[str, Any]) -> None:
    """The proxy is published; admin, Prometheus and Grafana on host loopback only; no
    model port anywhere (backends bind 127.0.0.1 inside the gpumux container)."""
    model_ports = {model["port"] for model in GPUMUX_CONFIG["models"].values()}
    gpumux_ports = published(parsed["services"]["gpumux"])
    public = {(host, target) for ip, host, target in gpumux_ports if ip in ("", "0.0.0.0")}
    assert public == {(GPUMUX_CONFIG["port"], GPUMUX_CONFIG["port"])}
    assert ("127.0.0.1", GPUMUX_CONFIG["admin_port"], GPUMUX_CONFIG["admin_port"]) in gpumux_ports
    for name, service in parsed["services"].items():
        for ip, host, target in published(service):
            assert host not in model_ports, (name, host)
            assert target not in model_ports, (name, target)
            if name != "gpumux":
                assert ip == "127.0.0.1", (name, host)
    # The proxy listens on every interface of the container, so the published port works.
    assert GPUMUX_CONFIG["host"] == "0.0.0.0"


def test_prometheus_scrapes_gpumux_and_grafana_is_provisioned(parsed: dict[str, Any]) -> None:
    services = parsed["services"]
    prometheus_mounts = bind_sources(services["prometheus"])
    scrape = yaml.safe_load(Path(prometheus_mounts["/etc/prometheus/prometheus.yml"]).read_text())
    targets = {
        target
        for job in scrape["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == {f"gpumux:{GPUMUX_CONFIG['metrics_port']}"}
    assert Path(prometheus_mounts["/etc/prometheus/alerts.yml"]).is_file()

    grafana_mounts = bind_sources(services["grafana"])
    provisioning = Path(grafana_mounts["/etc/grafana/provisioning"])
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "gpumux.yaml").read_text())
    dashboards_dir = providers["providers"][0]["options"]["path"]
    dashboard = Path(grafana_mounts[f"{dashboards_dir}/gpumux.json"])
    assert dashboard == DEPLOY / "grafana" / "gpumux.json"
    assert json.loads(dashboard.read_text())["uid"] == "gpumux"


def test_the_admin_token_is_required(tmp_path: Path) -> None:
    """`up` without GPUMUX_ADMIN_TOKEN stops at parse time, naming the variable."""
    result = compose_config({"HF_HOME": str(tmp_path)})
    assert result.returncode != 0
    assert "GPUMUX_ADMIN_TOKEN" in result.stderr


def test_the_parser_rejects_what_compose_does_not_know(tmp_path: Path) -> None:
    """The parser really validates: an unknown key in a copy of the file is an error."""
    broken = tmp_path / "compose.yaml"
    text = COMPOSE.read_text().replace("    ipc: host\n", "    ipc: host\n    ipc_mode: host\n")
    assert text != COMPOSE.read_text()
    broken.write_text(text)
    result = compose_config({"GPUMUX_ADMIN_TOKEN": "x", "HF_HOME": str(tmp_path)}, broken)
    assert result.returncode != 0
    assert "ipc_mode" in result.stderr


def test_the_compose_config_validates_with_gpumux() -> None:
    """deploy/config.json (mounted at /etc/gpumux/config.json) is a valid gpumux config
    whose admin token comes from the variable compose sets."""
    assert GPUMUX_CONFIG["admin_token_env"] == "GPUMUX_ADMIN_TOKEN"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "gpumux"), "validate", str(DEPLOY / "config.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
