"""CRIU images in an S3-compatible object store: upload, download, sweep, progress.

Owns: the key layout `<prefix>/<model>/<version>/<file>` (the manifest last, so an
object set without `manifest.json` is never an image), multipart transfers through
s3transfer's `TransferManager` with bounded concurrency, explicit botocore timeouts and
standard retries, sha256 verification of every downloaded file before the image is
installed, the start-up sweep of abandoned multipart uploads, and a progress record per
transfer for logs and the status API.
With `manifest_key_env` set (`s3_auth`), an upload writes `manifest.json.hmac` after the
files and before the manifest, and every manifest read checks it before the manifest is
parsed or any file downloaded: an unsigned or altered image fails with
`StoreUnauthenticated`, leaving nothing on local disk. Every manifest read also checks
that the version is one plain path segment and that the manifest names the model and
version it was found under (a signed manifest replayed elsewhere is refused).
Does not: decide when to transfer (`checkpoints` uploads after a dump, off the switch
path, and downloads before a restore) or run CRIU.

boto3, botocore and s3transfer are imported on first use, not with the module: they cost
every `gpumux` command ~0.2 s of start-up and only a configured object store needs them.
boto3 blocks, so every call runs on a small private thread pool: a hung store can tie
up those threads (each call is bounded by connect/read timeouts x attempts) but never
the event loop or the default executor. An overall deadline (`transfer_timeout_secs`)
abandons a transfer that keeps making slow progress; its thread is told to stop.
Credentials come from the standard AWS chain; keys in the config are only a fallback.
"""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from gpumux.checkpoint import images
from gpumux.checkpoint.images import Image, ImageInvalid, Manifest
from gpumux.checkpoint.s3 import auth as s3_auth
from gpumux.checkpoint.s3.progress import Progress, Record, Transfers

if TYPE_CHECKING:
    from s3transfer.manager import TransferConfig  # type: ignore[import-untyped]
from gpumux.core.config import ObjectStoreConfig

log = structlog.get_logger(__name__)

T = TypeVar("T")
#: Threads that run boto3 calls; transfers fan out further inside s3transfer.
CALL_THREADS = 2
PROGRESS_LOG_SECS = 2.0
MIB = 1 << 20
#: A manifest lists a few hundred files; a bigger object is not one of ours.
MAX_MANIFEST_BYTES = 16 * MIB


class StoreError(Exception):
    """The object store failed, timed out, or holds no such image."""


class StoreUnauthenticated(StoreError):
    """The image in the store has no valid signature under our key: never restore it."""


class _Cancelled(Exception):
    pass


class S3Store:
    def __init__(self, config: ObjectStoreConfig, environ: Mapping[str, str] | None = None) -> None:
        self._config = config
        # Raises ConfigProblems when the named variable is unusable (checked at start-up).
        self._signing_key = s3_auth.manifest_key(config, environ)
        self._prefix = config.prefix.strip("/")
        self._pool = ThreadPoolExecutor(CALL_THREADS, thread_name_prefix="gpumux-s3")
        self._client: Any = None
        self._started = datetime.datetime.now(datetime.UTC)
        self.transfers = Transfers()
        self._client_lock = threading.Lock()

    @property
    def bucket(self) -> str:
        return self._config.bucket

    @property
    def authenticated(self) -> bool:
        """Whether images are signed on upload and must be signed to be downloaded."""
        return self._signing_key is not None

    def key(self, model: str, version: str, name: str = "") -> str:
        parts = [p for p in (self._prefix, model, version, name) if p]
        return "/".join(parts)

    def url(self, model: str, version: str) -> str:
        return f"s3://{self.bucket}/{self.key(model, version)}/"

    # ---- async API ----------------------------------------------------------------------

    async def upload(self, image: Image) -> None:
        """Upload every file of `image`, then its manifest; raises StoreError."""
        record = self.transfers.start(
            "upload", image.model, image.version, image.manifest.total_bytes
        )
        await self._call(lambda stop: self._upload(image, record, stop), record)

    async def download(self, model: str, version: str, target: Path) -> Image:
        """Fetch one image into `target`, verified against its manifest; raises StoreError."""
        record = self.transfers.start("download", model, version, 0)
        return await self._call(
            lambda stop: self._download(model, version, target, record, stop), record
        )

    async def latest_version(self, model: str) -> str | None:
        """The newest version of `model` whose manifest is in the store."""
        return await self._call(lambda _stop: self._latest_version(model), None)

    async def fetch_manifest(self, model: str, version: str) -> Manifest:
        return await self._call(lambda _stop: self._get_manifest(model, version), None)

    async def sweep_multipart(self) -> int:
        """Abort multipart uploads under our prefix that began before this process started."""
        return await self._call(lambda _stop: self._sweep(), None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- plumbing -----------------------------------------------------------------------

    async def _call(self, fn: Callable[[threading.Event], T], record: Record | None) -> T:
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, fn, stop)
        limit = self._config.transfer_timeout_secs
        try:
            async with asyncio.timeout(limit):
                result = await asyncio.shield(future)
        except TimeoutError:
            stop.set()
            self.transfers.finish(
                record, "failed", f"no result within transfer_timeout_secs={limit:g}"
            )
            raise StoreError(f"object store: no result within {limit:g}s") from None
        except asyncio.CancelledError:
            stop.set()
            self.transfers.finish(record, "cancelled", None)
            raise
        except _store_errors() as exc:
            self.transfers.finish(record, "failed", _describe(exc))
            raise StoreError(f"object store: {_describe(exc)}") from exc
        except s3_auth.ImageUnauthenticated as exc:
            self.transfers.finish(record, "failed", str(exc))
            raise StoreUnauthenticated(f"object store: {exc}") from exc
        except (ImageInvalid, _Cancelled) as exc:
            self.transfers.finish(record, "failed", str(exc))
            raise StoreError(f"object store: {exc}") from exc
        except Exception as exc:  # s3transfer has error types of its own; all mean "failed"
            self.transfers.finish(record, "failed", _describe(exc))
            raise StoreError(f"object store: {type(exc).__name__}: {_describe(exc)}") from exc
        self.transfers.finish(record, "done", None)
        return result

    def client(self) -> Any:
        with self._client_lock:  # the pool's threads may ask at the same time
            return self._client or self._make_client()

    def _make_client(self) -> Any:
        if self._client is None:
            import boto3  # lazily: boto3 costs every CLI start ~0.2 s (module docstring)
            import botocore.config

            config = self._config
            session = boto3.session.Session()
            keys: dict[str, str] = {}
            if session.get_credentials() is None and config.access_key and config.secret_key:
                keys = {
                    "aws_access_key_id": config.access_key,
                    "aws_secret_access_key": config.secret_key,
                }
            self._client = session.client(
                "s3",
                endpoint_url=config.endpoint or None,
                region_name=config.region,
                config=botocore.config.Config(
                    connect_timeout=config.connect_timeout_secs,
                    read_timeout=config.read_timeout_secs,
                    retries={"mode": "standard", "max_attempts": config.max_attempts},
                    max_pool_connections=max(10, config.max_concurrency * 2),
                ),
                **keys,
            )
        return self._client

    def _transfer_config(self) -> TransferConfig:
        from s3transfer.manager import TransferConfig  # lazily, like boto3

        chunk = int(self._config.multipart_chunk_mib * MIB)
        return TransferConfig(
            multipart_threshold=chunk,
            multipart_chunksize=chunk,
            max_request_concurrency=self._config.max_concurrency,
        )

    def _wait(self, futures: list[Any], record: Record, stop: threading.Event) -> None:
        last = time.monotonic()
        for future in futures:
            while not future.done():
                if stop.is_set():
                    raise _Cancelled("transfer abandoned")
                time.sleep(0.05)
                if time.monotonic() - last >= PROGRESS_LOG_SECS:
                    last = time.monotonic()
                    self.transfers.progress(record)
            future.result()

    def _upload(self, image: Image, record: Record, stop: threading.Event) -> None:
        client = self.client()
        subscriber = Progress(record)
        manager = _transfer_manager(client, self._transfer_config())
        cancel = True
        try:
            futures = [
                manager.upload(
                    str(image.path / f.path),
                    self.bucket,
                    self.key(image.model, image.version, f.path),
                    subscribers=[subscriber],
                )
                for f in image.manifest.files
            ]
            self._wait(futures, record, stop)
            cancel = False
        finally:
            # cancel=True aborts multipart uploads still in progress.
            manager.shutdown(cancel=cancel)
        body = (image.path / images.MANIFEST).read_bytes()
        if self._signing_key is not None:
            # Before the manifest, which stays the "complete" marker: an image that looks
            # complete always has its signature (a re-upload overwrites both).
            client.put_object(
                Bucket=self.bucket,
                Key=self.key(image.model, image.version, s3_auth.SIGNATURE),
                Body=s3_auth.sign(self._signing_key, body).encode(),
            )
        client.put_object(
            Bucket=self.bucket, Key=self.key(image.model, image.version, images.MANIFEST), Body=body
        )

    def _get_manifest(self, model: str, version: str) -> Manifest:
        """The manifest of `model`/`version`, authenticated (with a key) before it is parsed."""
        if not images.safe_name(version):
            raise ImageInvalid(f"{model}/{version!r}: not a plain version name")
        body = self._get_small(model, version, images.MANIFEST, MAX_MANIFEST_BYTES)
        if body is None:
            raise ImageInvalid(f"no manifest for {model}/{version} in the store")
        if self._signing_key is not None:
            signature = self._get_small(
                model, version, s3_auth.SIGNATURE, s3_auth.MAX_SIGNATURE_BYTES
            )
            s3_auth.verify(self._signing_key, body, signature, what=self.url(model, version))
        try:
            manifest = Manifest.model_validate_json(body)
        except ValueError as exc:
            raise ImageInvalid(f"unreadable manifest for {model}/{version}: {exc}") from None
        if (manifest.model, manifest.version) != (model, version):
            raise ImageInvalid(
                f"the manifest at {model}/{version} describes {manifest.model}/{manifest.version}"
            )
        return manifest

    def _get_small(self, model: str, version: str, name: str, limit: int) -> bytes | None:
        """One small object's bytes (None when absent); ImageInvalid when over `limit`."""
        try:
            reply = self.client().get_object(Bucket=self.bucket, Key=self.key(model, version, name))
        except _client_error() as exc:
            response: dict[str, Any] = getattr(exc, "response", {})
            if response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        stream = reply["Body"]
        try:
            body: bytes = stream.read(limit + 1)
        finally:
            stream.close()
        if len(body) > limit:
            raise ImageInvalid(f"{name} of {model}/{version} is over {limit} bytes")
        return body

    def _download(
        self, model: str, version: str, target: Path, record: Record, stop: threading.Event
    ) -> Image:
        manifest = self._get_manifest(model, version)
        record["bytes_total"] = manifest.total_bytes
        staging = images.staging_dir(target)
        manager = _transfer_manager(self.client(), self._transfer_config())
        subscriber = Progress(record)
        done = False
        try:
            futures = []
            for entry in manifest.files:
                path = staging / entry.path
                images.make_private_dirs(path.parent)
                futures.append(
                    manager.download(
                        self.bucket,
                        self.key(model, version, entry.path),
                        str(path),
                        subscribers=[subscriber],
                    )
                )
            self._wait(futures, record, stop)
            manager.shutdown()
            image = images.install(staging, target, manifest)
            done = True
            return image
        finally:
            if not done:
                manager.shutdown(cancel=True)
                images.discard_staging(staging)

    def _latest_version(self, model: str) -> str | None:
        prefix = self.key(model, "") + "/"
        paginator = self.client().get_paginator("list_objects_v2")
        found: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                rest = item["Key"][len(prefix) :]
                version, _, name = rest.partition("/")
                if name == images.MANIFEST and images.safe_name(version):
                    found.append(version)
        return max(found) if found else None

    def _sweep(self) -> int:
        client = self.client()
        aborted = 0
        paginator = client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._prefix):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] >= self._started:
                    continue  # begun by this process
                client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                aborted += 1
                log.warning("s3_multipart_aborted", key=upload["Key"])
        return aborted


def _store_errors() -> tuple[type[BaseException], ...]:
    """What a boto3 call raises when the store, not our code, failed."""
    import botocore.exceptions  # lazily, like boto3

    return (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError)


def _client_error() -> type[BaseException]:
    import botocore.exceptions  # lazily, like boto3

    return botocore.exceptions.ClientError  # type: ignore[no-any-return]


def _transfer_manager(client: Any, config: TransferConfig) -> Any:
    from s3transfer.manager import TransferManager  # lazily, like boto3

    return TransferManager(client, config)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
