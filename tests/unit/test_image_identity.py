"""What an image must match to be restored: the model's launch and the host it runs on."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from gpumux.checkpoint.criu import CriuError
from gpumux.checkpoint.identity import HostIdentity, ModelIdentity, mismatches
from gpumux.checkpoint.images import Manifest
from gpumux.core.config import Config

pytestmark = pytest.mark.unit

HOST = HostIdentity(kernel="6.18.44", criu_version="4.2.1", driver_version=None)


def config(**model: Any) -> Config:
    entry = {"model_path": "org/model", "port": 8001, **model}
    return Config.model_validate({"models": {"a": entry}, "vllm_command": "vllm"})


def manifest_of(identity: ModelIdentity, host: HostIdentity = HOST, **changes: Any) -> Manifest:
    fields: dict[str, Any] = {
        "model": identity.model,
        "model_path": identity.model_path,
        "launch": identity.launch,
        "version": "v1",
        "created": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC).isoformat(),
        "eviction": "discard+checkpoint",
        "tp": identity.tp,
        "port": identity.port,
        "pids": [10],
        "shm_files": [],
        "criu_version": host.criu_version,
        "kernel": host.kernel,
        "driver_version": host.driver_version,
        "files": [],
    }
    return Manifest.model_validate({**fields, **changes})


def test_the_launch_digest_follows_what_shapes_the_process_only() -> None:
    same = ModelIdentity.of(config(), "a")
    assert ModelIdentity.of(config(), "a") == same
    # What the backend is started with changes the identity...
    for changed in (
        {"extra_args": ["--max-model-len", "4096"]},
        {"env": {"VLLM_ATTENTION_BACKEND": "FLASHINFER"}},
        {"gpus": [1]},
        {"enable_sleep_mode": False},
        {"model_path": "org/other"},
    ):
        assert ModelIdentity.of(config(**changed), "a").launch != same.launch, changed
    # ...how gpumux schedules and restores it does not.
    for unchanged in (
        {"checkpoint_path": "/images/a/v1"},
        {"eviction": {"weights": "offload", "process": "keep_running"}},
        {"startup_timeout_secs": 30},
        {"max_queue": 3},
    ):
        assert ModelIdentity.of(config(**unchanged), "a") == same, unchanged
    tp2 = ModelIdentity.of(config(extra_args=["--tensor-parallel-size=2"]), "a")
    assert (tp2.tp, tp2.port, tp2.model_path) == (2, 8001, "org/model")


def test_a_matching_manifest_has_no_mismatch() -> None:
    identity = ModelIdentity.of(config(), "a")
    assert mismatches(manifest_of(identity), identity, HOST) == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model": "b"}, "model: image has 'b', here 'a'"),
        ({"model_path": "org/other"}, "model_path: image has 'org/other', here 'org/model'"),
        ({"tp": 2}, "tp: image has 2, here 1"),
        ({"port": 9000}, "port: image has 9000, here 8001"),
        ({"kernel": "6.1.0"}, "kernel: image has '6.1.0', here '6.18.44'"),
        ({"criu_version": "4.1.1"}, "criu_version: image has '4.1.1', here '4.2.1'"),
        ({"driver_version": "550.54"}, "driver_version: image has '550.54', here None"),
        ({"launch": "0" * 64}, "launch: vllm_command, extra_args, env, gpus or sleep mode"),
    ],
)
def test_each_differing_field_is_named(change: dict[str, Any], named: str) -> None:
    identity = ModelIdentity.of(config(), "a")
    found = mismatches(manifest_of(identity, **change), identity, HOST)
    assert len(found) == 1
    assert found[0].startswith(named)


def test_fields_older_manifests_did_not_record_are_not_compared() -> None:
    identity = ModelIdentity.of(config(), "a")
    old = manifest_of(identity, model_path=None, launch=None)
    assert mismatches(old, identity, HOST) == []
    assert mismatches(old, ModelIdentity.of(config(model_path="org/other"), "a"), HOST) == []


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        # What CRIU 4.2.1 logs when a pid of the image belongs to another process.
        (
            CriuError(
                "restore",
                "exit 1: Error (criu/cr-restore.c:1237): Can't fork for 3818: File exists | "
                "Error (criu/cr-restore.c:2331): Restoring FAILED.",
                returncode=1,
            ),
            "pid_collision",
        ),
        # ... and when a port the tree listened on is bound by another socket.
        (
            CriuError(
                "restore",
                "exit 1: (00.051) 27140: Error (criu/sk-inet.c:1059): inet: Can't bind inet "
                "socket (id 166): Address already in use | Error (criu/files.c:1221): Unable "
                "to open fd=6 id=0xa6 | Error (criu/cr-restore.c:2331): Restoring FAILED.",
                returncode=1,
            ),
            "port_busy",
        ),
        (CriuError("restore", "no result within 300s; ", timed_out=True), "timed_out"),
        (CriuError("restore", "exit 1: Error (criu/files-reg.c:2240): Can't open file"), None),
        (
            CriuError("restore", "exit 1: Error (criu/sk-unix.c:1400): Can't bind: No such file"),
            None,
        ),
    ],
)
def test_criu_errors_say_whose_fault_they_are(error: CriuError, kind: str | None) -> None:
    found = {name: getattr(error, name) for name in ("pid_collision", "port_busy", "timed_out")}
    assert found == {name: name == kind for name in found}
