"""CRIU images in a real local S3 server (moto_server): upload, download, and its failures.

Needs root and CRIU >= 4.2 (scripts/test installs it); without them these tests FAIL.
"""

from __future__ import annotations

import json
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

from tests.integration.test_criu_prebake import baked_image, prebake
from tests.support.criu import (
    CHECKPOINT,
    chat,
    checkpoint_section,
    events,
    require_criu,
    wait_event,
    wait_image,
)
from tests.support.daemon import (
    daemon_config,
    http_status,
    metric_value,
    mock_model,
    running_daemon,
    wait_until,
)
from tests.support.s3 import AWS_ENV, BUCKET, PREFIX, S3Server, moto_server

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _criu_present() -> None:
    require_criu()


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


def run(tmp: Path, name: str, config: dict[str, Any]) -> Any:
    return running_daemon(
        tmp / name,
        config["models"],
        env=AWS_ENV,
        checkpoint=config["checkpoint"],
        state_dir=config["state_dir"],
    )


def test_upload_then_download_restores_a_model_whose_image_is_only_in_s3(
    tmp_path: Path, s3: S3Server
) -> None:
    config, image = baked_in_s3(tmp_path, s3)
    keys = s3.object_sizes()
    manifest = json.loads((image / "manifest.json").read_text())
    assert set(keys) == {f"{PREFIX}/a/{image.name}/{f['path']}" for f in manifest["files"]} | {
        f"{PREFIX}/a/{image.name}/manifest.json"
    }
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
        assert metric_value(daemon, "gpumux_switches_total", to="a", outcome="fallback_cold") == 1
    assert not image.exists()  # nothing half-downloaded is left looking like an image
    assert not list(image.parent.glob(".staging-*"))


UPLOADER = """
import asyncio, json, os, datetime
from pathlib import Path
from gpumux import images
from gpumux.config import ObjectStoreConfig
from gpumux.s3_store import S3Store

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
