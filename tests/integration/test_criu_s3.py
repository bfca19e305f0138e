"""CRIU images in a real local S3 server (moto_server): upload, download, and its failures.

Also image authentication (`manifest_key_env`): a restore runs the image as root, so a
daemon with a key restores only images whose manifest carries a valid HMAC under it.

Needs root and CRIU >= 4.2 (scripts/test installs it); without them these tests FAIL.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.client import http_status
from tests.support.criu import (
    CHECKPOINT,
    baked_image,
    chat,
    checkpoint_section,
    prebake,
    wait_image,
)
from tests.support.daemon import (
    daemon_config,
    events,
    mock_model,
    running_daemon,
    start_daemon,
    wait_event,
)
from tests.support.metrics import metric_value
from tests.support.s3 import AWS_ENV, BUCKET, PREFIX, S3Server, moto_server
from tests.support.waits import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("criu")]

#: The variable `manifest_key_env` names in these tests.
KEY_ENV = "GPUMUX_TEST_IMAGE_KEY"
SIGNATURE = "manifest.json.hmac"


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    for name, value in AWS_ENV.items():  # the pre-bake subprocess inherits these
        monkeypatch.setenv(name, value)
    with moto_server(tmp_path) as server:
        yield server


def baked_in_s3(tmp: Path, s3: S3Server, **store: Any) -> tuple[dict[str, Any], Path]:
    """Pre-bake model a with an object store; return the config and the local image path."""
    models = {"a": mock_model(), "b": mock_model()}
    checkpoint = checkpoint_section(tmp, object_store=s3.object_store(**store))
    config = daemon_config(tmp, models, checkpoint=checkpoint)
    result = prebake(tmp, config)
    image = baked_image(result)
    assert f"uploaded: s3://{BUCKET}/{PREFIX}/a/{image.name}/" in result.stdout
    return config, image


def set_image_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh HMAC key in KEY_ENV (pre-bake subprocesses and daemons inherit it)."""
    key = secrets.token_hex(32)
    monkeypatch.setenv(KEY_ENV, key)
    return key


def get_object(s3: S3Server, key: str) -> bytes:
    body: bytes = s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return body


def run(tmp: Path, name: str, config: dict[str, Any]) -> Any:
    return running_daemon(
        tmp / name,
        config["models"],
        env=AWS_ENV,
        checkpoint=config["checkpoint"],
        state_dir=config["state_dir"],
    )


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_upload_then_download_restores_a_model_whose_image_is_only_in_s3(
    tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch, signed: bool
) -> None:
    """Signed: the pre-bake signs with the key, a second process with the same key restores."""
    secret = set_image_key(monkeypatch) if signed else None
    config, image = baked_in_s3(tmp_path, s3, **({"manifest_key_env": KEY_ENV} if signed else {}))
    keys = s3.object_sizes()
    manifest = json.loads((image / "manifest.json").read_text())
    where = f"{PREFIX}/a/{image.name}/"
    assert set(keys) == {where + f["path"] for f in manifest["files"]} | {
        where + "manifest.json",
        *([where + SIGNATURE] if signed else []),
    }
    if secret is not None:  # the HMAC of the exact manifest bytes in the bucket
        expected = hmac.new(secret.encode(), get_object(s3, where + "manifest.json"), "sha256")
        assert get_object(s3, where + SIGNATURE).decode() == expected.hexdigest()
    largest = max(manifest["files"], key=lambda f: f["size"])
    etag = s3.client().head_object(Bucket=BUCKET, Key=f"{PREFIX}/a/{image.name}/{largest['path']}")
    assert "-" in etag["ETag"]  # a multipart upload (parts of 5 MiB)
    shutil.rmtree(image)
    config["models"]["a"]["checkpoint_path"] = str(image)
    with run(tmp_path, "serve", config) as daemon:
        assert metric_value(daemon, "gpumux_model_state", model="a", state="checkpointed") == 1
        assert chat(daemon, "a")
        assert wait_event(daemon, "s3_transfer_done", op="download", model="a")
        assert events(daemon, "criu_restored", model="a")
        assert not events(daemon, "image_unauthenticated")
        log = daemon.log_text()
    assert secret is None or secret not in log
    assert (image / "manifest.json").is_file()  # downloaded where checkpoint_path points
    assert oct((image / largest["path"]).stat().st_mode & 0o777) == oct(0o600)


def test_dump_uploads_in_the_background_and_s3_down_keeps_the_local_image_working(
    tmp_path: Path, s3: S3Server
) -> None:
    store = s3.object_store()
    models = {"a": mock_model(eviction=CHECKPOINT), "b": mock_model()}
    checkpoint = checkpoint_section(tmp_path, object_store=store)
    with running_daemon(tmp_path, models, env=AWS_ENV, checkpoint=checkpoint) as daemon:
        first = chat(daemon, "a")
        chat(daemon, "b")
        image = wait_image(tmp_path / "images", "a")
        wait_event(daemon, "image_uploaded", model="a")
        assert f"{PREFIX}/a/{image.name}/manifest.json" in s3.object_sizes()
        chat(daemon, "a")  # b is checkpointed now (its upload runs in the background)
        s3.signal(signal.SIGKILL)
        s3.process.wait(timeout=10)
        assert chat(daemon, "b")  # restored from its local image, S3 or not
        assert chat(daemon, "a") == first
        assert len(events(daemon, "criu_restored")) >= 2


def test_only_in_s3_and_s3_dead_means_a_cold_start(tmp_path: Path, s3: S3Server) -> None:
    config, image = baked_in_s3(tmp_path, s3)
    shutil.rmtree(image)
    config["models"]["a"]["checkpoint_path"] = str(image)
    s3.signal(signal.SIGKILL)
    s3.process.wait(timeout=10)
    with run(tmp_path, "serve", config) as daemon:
        assert metric_value(daemon, "gpumux_model_state", model="a", state="stopped") == 1
        assert chat(daemon, "a")
        assert events(daemon, "prebaked_image_unavailable", model="a")


def test_hung_s3_is_bounded_and_the_daemon_stays_responsive(tmp_path: Path, s3: S3Server) -> None:
    config, image = baked_in_s3(tmp_path, s3, transfer_timeout_secs=6)
    shutil.rmtree(image)
    config["models"]["a"]["checkpoint_path"] = str(image)
    with run(tmp_path, "serve", config) as daemon:
        s3.signal(signal.SIGSTOP)  # accepts connections (the kernel does), never answers
        replies: list[str] = []
        started = time.monotonic()
        waiting = threading.Thread(target=lambda: replies.append(chat(daemon, "a")))
        waiting.start()
        time.sleep(1.0)
        for _ in range(5):  # the proxy answers while the download hangs
            t0 = time.monotonic()
            assert http_status(daemon.url + "/health") == 200
            assert time.monotonic() - t0 < 0.5
            assert chat(daemon, "b")
        waiting.join(timeout=40)
        assert replies  # a cold start once the bounded download gave up
        assert time.monotonic() - started < 30
        assert metric_value(daemon, "gpumux_event_loop_lag_seconds") < 0.5
        failed = wait_event(daemon, "s3_transfer_failed", op="download", model="a")
        assert "transfer_timeout_secs" in failed["error"] or "timeout" in failed["error"].lower()
        s3.signal(signal.SIGCONT)


def test_upload_killed_mid_multipart_is_never_valid_and_swept_at_next_start(
    tmp_path: Path, s3: S3Server
) -> None:
    store = s3.object_store(max_concurrency=1)
    script = tmp_path / "upload.py"
    script.write_text(UPLOADER.format(root=str(tmp_path / "big"), store=json.dumps(store)))
    uploader = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.DEVNULL)
    try:
        wait_until(s3.multipart_uploads, timeout=30, what="a multipart upload in flight")
        uploader.kill()
    finally:
        uploader.kill()
        uploader.wait(timeout=10)
    assert s3.multipart_uploads()
    assert not [k for k in s3.object_sizes() if k.endswith("manifest.json")]  # never an image
    checkpoint = checkpoint_section(tmp_path, object_store=store)
    models = {"a": mock_model(eviction=CHECKPOINT)}
    with running_daemon(tmp_path / "serve", models, env=AWS_ENV, checkpoint=checkpoint) as daemon:
        wait_event(daemon, "s3_sweep_done")
        assert s3.multipart_uploads() == []


def test_corrupt_download_is_rejected_and_the_model_cold_starts(
    tmp_path: Path, s3: S3Server
) -> None:
    config, image = baked_in_s3(tmp_path, s3)
    manifest = json.loads((image / "manifest.json").read_text())
    largest = max(manifest["files"], key=lambda f: f["size"])
    key = f"{PREFIX}/a/{image.name}/{largest['path']}"
    body = bytearray((image / largest["path"]).read_bytes())
    body[len(body) // 3] ^= 0x55
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    shutil.rmtree(image)
    config["models"]["a"]["checkpoint_path"] = str(image)
    with run(tmp_path, "serve", config) as daemon:
        assert chat(daemon, "a")
        failed = wait_event(daemon, "s3_transfer_failed", op="download", model="a")
        assert "sha256 mismatch" in failed["error"]
        assert not events(daemon, "criu_restored", model="a")
        failures = "gpumux_checkpoint_restore_failures_total"
        assert metric_value(daemon, failures, model="a", reason="corrupt") == 1
        assert metric_value(daemon, "gpumux_switches_total", to="a", outcome="fallback_cold") == 1
    assert not image.exists()  # nothing half-downloaded is left looking like an image
    assert not list(image.parent.glob(".staging-*"))


UPLOADER = """
import asyncio, json, os, datetime
from pathlib import Path
from gpumux.checkpoint import images
from gpumux.core.config import ObjectStoreConfig
from gpumux.checkpoint.s3.store import S3Store

root = Path({root!r})
target = root / "a" / "20990101T000000000000Z"
staging = images.staging_dir(target)
with open(staging / "pages-1.img", "wb") as f:
    f.write(os.urandom(96 << 20))
fields = dict(model="a", created=datetime.datetime.now(datetime.UTC).isoformat(),
              eviction="discard+checkpoint", tp=1, port=1, pids=[1], shm_files=[],
              criu_version="4.2.1", kernel="k", driver_version=None)
image = images.publish(staging, target, fields)
asyncio.run(S3Store(ObjectStoreConfig(**json.loads({store!r}))).upload(image))
"""


def forge(s3: S3Server, version: str) -> None:
    """What someone who can write the bucket but lacks the key can do: alter a file, fix
    its sha256 in the manifest, and sign the result with a key of their own."""
    where = f"{PREFIX}/a/{version}/"
    manifest = json.loads(get_object(s3, where + "manifest.json"))
    largest = max(manifest["files"], key=lambda f: f["size"])
    body = bytearray(get_object(s3, where + largest["path"]))
    body[len(body) // 3] ^= 0x55
    largest["sha256"] = hashlib.sha256(body).hexdigest()
    forged = json.dumps(manifest, indent=1).encode()
    signature = hmac.new(secrets.token_bytes(32), forged, "sha256").hexdigest()
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key=where + largest["path"], Body=bytes(body))
    client.put_object(Bucket=BUCKET, Key=where + SIGNATURE, Body=signature.encode())
    client.put_object(Bucket=BUCKET, Key=where + "manifest.json", Body=forged)


def test_an_image_forged_without_the_key_is_refused_and_the_model_cold_starts(
    tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forgery is consistent (sha256 values match), so only the signature stops it:
    refused before any file is downloaded, nothing restored, nothing left on disk."""
    secret = set_image_key(monkeypatch)
    config, image = baked_in_s3(tmp_path, s3, manifest_key_env=KEY_ENV)
    shutil.rmtree(image)
    config["models"]["a"]["checkpoint_path"] = str(image)
    with run(tmp_path, "serve", config) as daemon:
        # Start-up checked the genuine manifest; the bucket changes before the download.
        assert metric_value(daemon, "gpumux_model_state", model="a", state="checkpointed") == 1
        forge(s3, image.name)
        assert chat(daemon, "a")
        refused = wait_event(daemon, "image_unauthenticated", model="a")
        assert "signature does not match" in refused["error"]
        assert f"s3://{BUCKET}/{PREFIX}/a/{image.name}/" in refused["error"]  # names the image
        failed = wait_event(daemon, "s3_transfer_failed", op="download", model="a")
        # Refused on the manifest, before a single file was fetched.
        assert (failed["bytes_total"], failed["bytes_done"]) == (0, 0)
        assert not events(daemon, "criu_restored", model="a")
        assert metric_value(daemon, "gpumux_switches_total", to="a", outcome="fallback_cold") == 1
        refusals = metric_value(
            daemon, "gpumux_checkpoint_restore_failures_total", model="a", reason="unauthenticated"
        )
        assert refusals == 1
        log = daemon.log_text()
    assert secret not in log
    assert not list(image.parent.glob(".staging-*"))
    assert not (image / "manifest.json").exists()  # the forgery never became an image


def test_a_daemon_with_a_key_refuses_an_unsigned_image(
    tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, image = baked_in_s3(tmp_path, s3)  # made by a pre-bake without a key
    assert not [k for k in s3.object_sizes() if k.endswith(SIGNATURE)]
    shutil.rmtree(image)
    set_image_key(monkeypatch)
    config["checkpoint"]["object_store"]["manifest_key_env"] = KEY_ENV
    config["models"]["a"]["checkpoint_path"] = str(image)
    with run(tmp_path, "serve", config) as daemon:
        refused = wait_event(daemon, "image_unauthenticated", model="a")
        assert f"has no {SIGNATURE}" in refused["error"]
        assert metric_value(daemon, "gpumux_model_state", model="a", state="stopped") == 1
        refusals = metric_value(
            daemon, "gpumux_checkpoint_restore_failures_total", model="a", reason="unauthenticated"
        )
        assert refusals == 1
        assert chat(daemon, "a")  # a cold start
        assert events(daemon, "process_spawned", model="a")
        assert not events(daemon, "criu_restored", model="a")
        assert not events(daemon, "s3_transfer_started", op="download")
    assert not image.exists()


@pytest.mark.parametrize(("value", "message"), [(None, "is empty or unset"), ("short", "shorter")])
def test_an_unusable_key_variable_refuses_to_serve_and_to_prebake(
    tmp_path: Path,
    s3: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    value: str | None,
    message: str,
) -> None:
    """An operator who asked for signed images never silently gets unsigned ones: exit 2."""
    if value is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    store = s3.object_store(manifest_key_env=KEY_ENV)
    config = daemon_config(
        tmp_path, {"a": mock_model()}, checkpoint=checkpoint_section(tmp_path, object_store=store)
    )
    daemon = start_daemon(tmp_path / "serve", config)
    assert daemon.process.wait(timeout=20) == 2
    text = daemon.log_text()
    assert "checkpoint.object_store.manifest_key_env" in text
    assert KEY_ENV in text
    assert message in text
    assert http_status(daemon.url + "/health") is None  # refused before binding
    baked = prebake(tmp_path, config)
    assert baked.returncode == 2, baked.stderr[-2000:]
    assert KEY_ENV in baked.stderr
    assert message in baked.stderr
    assert s3.object_sizes() == {}  # nothing was started, dumped or uploaded
