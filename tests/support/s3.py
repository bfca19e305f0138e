"""A real S3 server for tests: `moto_server` as a subprocess on loopback.

Owns: starting it on a free port (multipart part minimum lowered through
`S3_UPLOAD_PART_MIN_SIZE`), waiting until it answers, a bucket per test, the AWS
environment the daemon needs (dummy keys; instance metadata lookups off so nothing
leaves loopback), and stopping it. A subprocess rather than moto's threaded server so
tests can SIGSTOP (a hung store) or SIGKILL (a dead one) it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from tests.support.ports import free_port

READY_TIMEOUT_SECS = 30.0
BUCKET = "gpumux-images"
PREFIX = "tests"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class S3Server:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
            config=botocore.config.Config(
                connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}
            ),
        )

    def object_store(self, **extra: Any) -> dict[str, Any]:
        """The config's `checkpoint.object_store` for this server, with test-sized bounds."""
        return {
            "endpoint": self.endpoint,
            "bucket": BUCKET,
            "prefix": PREFIX,
            "connect_timeout_secs": 1,
            "read_timeout_secs": 2,
            "max_attempts": 2,
            "multipart_chunk_mib": 5,
            "max_concurrency": 2,
            "transfer_timeout_secs": 20,
            **extra,
        }

    def object_sizes(self, prefix: str = PREFIX) -> dict[str, int]:
        found: dict[str, int] = {}
        for page in (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        ):
            found.update({item["Key"]: item["Size"] for item in page.get("Contents", [])})
        return found

    def multipart_uploads(self) -> list[dict[str, Any]]:
        uploads: list[dict[str, Any]] = (
            self.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        )
        return uploads

    def signal(self, sig: int) -> None:
        with suppress(ProcessLookupError):
            self.process.send_signal(sig)


@contextmanager
def moto_server(tmp: Path) -> Iterator[S3Server]:
    port = free_port()
    env = {**os.environ, "S3_UPLOAD_PART_MIN_SIZE": str(256 * 1024), **AWS_ENV}
    with (tmp / "moto.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    server = S3Server(process, port)
    try:
        _wait_ready(server)
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.signal(signal.SIGCONT)  # a stopped process cannot die of SIGKILL's cleanup
        server.signal(signal.SIGKILL)
        process.wait(timeout=10)


def _wait_ready(server: S3Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECS
    while True:
        if server.process.poll() is not None:
            raise AssertionError(f"moto_server exited with {server.process.returncode}")
        try:
            server.client().list_buckets()
            return
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            if time.monotonic() > deadline:
                raise AssertionError("moto_server did not answer in time") from None
            time.sleep(0.1)
