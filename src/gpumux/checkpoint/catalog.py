"""Which CRIU image each model restores from next, and the life of images after a dump.

Owns: per model, the current image (just dumped, pre-baked, or downloaded), the
finalisation of a fresh dump off the switch path (hash + manifest, prune older images,
then upload in the background with retries), the on-demand download of an image that is
only in the object store, quarantine, removal after a restore when `keep_images` is
false, the start-up sweep of staging litter and abandoned multipart uploads, the
status record the admin API shows, and telling `reserved_ports` which images are held
(from a dump, an adoption or a download until pruned, removed or quarantined).
Does not: run CRIU or touch processes (`checkpoints`).

Pre-baked images (a model's `checkpoint_path`, or `prebaked` in the manifest) are never
pruned or deleted; a failed restore only renames them aside, or leaves them in place
(`checkpoints` says which). `RestoreFailure` names why a restore failed. An image in
the object store that fails authentication (`s3_auth`: unsigned, or signed with another
key) is logged as `image_unauthenticated` and never tried again by this run; the model
cold-starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import structlog

from gpumux.checkpoint import images
from gpumux.checkpoint.background import BackgroundTasks
from gpumux.checkpoint.images import Image, ImageInvalid, Manifest
from gpumux.checkpoint.reserved_ports import PortReservations
from gpumux.checkpoint.s3.store import S3Store, StoreError, StoreUnauthenticated
from gpumux.checkpoint.timeline import RestoreTimeline
from gpumux.checkpoint.verifier import Verifier
from gpumux.core.config import WeightStrategy

log = structlog.get_logger(__name__)

#: Pauses before the 2nd and 3rd upload attempt of a fresh image.
UPLOAD_RETRY_DELAYS = (5.0, 30.0)
#: How long start-up may spend asking the object store about a pre-baked image.
PREBAKED_LOOKUP_SECS = 20.0

OpObserver = Callable[[str, float], None]
T = TypeVar("T")


class RestoreFailure(StrEnum):
    """Why a model was not restored from its image: the `reason` label of
    `gpumux_checkpoint_restore_failures_total` (a small, fixed set)."""

    CORRUPT = "corrupt"  # missing, truncated or altered files (size or sha256)
    IDENTITY = "identity"  # made for another model, launch or host
    UNAUTHENTICATED = "unauthenticated"  # an S3 image without a valid manifest signature
    PID_COLLISION = "pid_collision"  # a pid of the image is taken ("File exists")
    PORT_BUSY = "port_busy"  # the model's port, or one the tree listened on, is taken
    CRIU_ERROR = "criu_error"  # `criu restore` (or putting back /dev/shm files) failed
    TIMEOUT = "timeout"  # `criu restore` ran past restore_timeout_secs
    UNHEALTHY = "unhealthy"  # restored, but the tree died or never answered /health
    UNAVAILABLE = "unavailable"  # no local image and the object store could not give one


class NoImage(Exception):
    """There is no usable image to restore; `quarantined` says where a bad one went."""

    def __init__(
        self,
        detail: str,
        *,
        quarantined: Path | None = None,
        reason: RestoreFailure = RestoreFailure.UNAVAILABLE,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.quarantined = quarantined
        self.reason = reason


@dataclass
class _Model:
    current: Image | None = None
    pending: asyncio.Task[Image | None] | None = None
    upload: asyncio.Task[bool] | None = None
    remote: tuple[str, Path] | None = None  # (version, local target) to download on demand


class ImageCatalog:
    def __init__(
        self,
        root: Path,
        *,
        keep_images: bool,
        store: S3Store | None,
        observe: OpObserver,
        ports: PortReservations | None = None,
        upload_retry_delays: tuple[float, ...] = UPLOAD_RETRY_DELAYS,
    ) -> None:
        self.root = root
        self.store = store
        self.ports = ports if ports is not None else PortReservations()
        self._keep = keep_images
        self._observe = observe
        self._retry_delays = upload_retry_delays
        self._models: dict[str, _Model] = {}
        self._protected: set[Path] = set()
        self._background = BackgroundTasks()
        self.verifier = Verifier()

    def entry(self, alias: str) -> _Model:
        return self._models.setdefault(alias, _Model())

    # ---- start-up ---------------------------------------------------------------------

    async def adopt_prebaked(
        self, alias: str, path: Path, check: Callable[[Manifest], list[str]]
    ) -> WeightStrategy:
        """Make `path` (an image, or a model's directory of images) the first restore source.

        Returns the weights strategy the image was made with. Raises NoImage when no image
        is usable here or in the object store, or when `check` finds the image's manifest
        does not match this model and host (the image is left where it is); the model
        then cold-starts.
        """
        entry = self.entry(alias)
        image = await asyncio.to_thread(images.resolve, path)
        if image is not None:
            _check(alias, image.manifest, check)
            entry.current = image
            self._protected.add(image.path)
            self.ports.need(image.path, image.manifest.bound_ports, lasting=True)
            self.prepare(alias)
            return WeightStrategy(image.manifest.weights)
        if self.store is None:
            log.warning("prebaked_image_missing", model=alias, path=str(path))
            raise NoImage(f"no image at {path}")
        try:
            # Bounded: a hung store must not hold the daemon's start for long.
            async with asyncio.timeout(PREBAKED_LOOKUP_SECS):
                version, target = path.name, path
                try:
                    manifest = await self.store.fetch_manifest(alias, version)
                except StoreUnauthenticated:
                    raise  # found but refused: not a reason to look for another
                except StoreError:
                    latest = await self.store.latest_version(alias)
                    if latest is None:
                        raise StoreError(f"no image of {alias} in the object store") from None
                    version, target = latest, path / latest
                    manifest = await self.store.fetch_manifest(alias, version)
        except StoreUnauthenticated as exc:
            _unauthenticated(alias, exc)
            raise NoImage(str(exc), reason=RestoreFailure.UNAUTHENTICATED) from exc
        except (StoreError, TimeoutError) as exc:
            log.warning("prebaked_image_unavailable", model=alias, path=str(path), error=str(exc))
            raise NoImage(f"no image of {alias} at {path} or in the object store") from exc
        _check(alias, manifest, check)
        entry.remote = (version, target)
        self._protected.add(target)
        self.ports.need(target, manifest.bound_ports, lasting=True)
        return WeightStrategy(manifest.weights)

    async def sweep_staging(self, extra: list[Path]) -> None:
        """Remove staging litter of interrupted dumps and downloads (under the images dir
        and beside pre-baked images in `extra`). Only at start, before any dump or download
        could be writing one."""
        swept = await asyncio.to_thread(_sweep_staging, [*_model_dirs(self.root), *extra])
        if swept:
            log.warning("image_staging_swept", paths=[str(p) for p in swept])

    async def housekeeping(self) -> None:
        """Abort multipart uploads an earlier run abandoned (never one of this run's)."""
        if self.store is not None:
            try:
                aborted = await self.store.sweep_multipart()
            except StoreError as exc:
                log.warning("s3_sweep_failed", error=str(exc))
            else:
                log.info("s3_sweep_done", aborted=aborted)

    # ---- after a dump -------------------------------------------------------------------

    def finalize_later(
        self, alias: str, staging: Path, target: Path, fields: dict[str, object], *, upload: bool
    ) -> asyncio.Task[Image | None]:
        task = self._spawn(self._finalize(alias, staging, target, fields, upload=upload))
        self.entry(alias).pending = task
        return task

    async def settle(self, alias: str) -> None:
        """Wait for a fresh dump of `alias` to become an image (or fail to)."""
        pending = self.entry(alias).pending
        if pending is not None:
            await asyncio.shield(pending)

    async def _finalize(
        self, alias: str, staging: Path, target: Path, fields: dict[str, object], *, upload: bool
    ) -> Image | None:
        entry = self.entry(alias)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            image = await asyncio.to_thread(images.publish, staging, target, fields)
        except (OSError, ValueError) as exc:
            log.error("image_publish_failed", model=alias, path=str(target), error=str(exc))
            await asyncio.to_thread(images.discard_staging, staging)
            self.ports.drop(target)
            return None
        finally:
            entry.pending = None
        entry.current = image
        await self.verifier.remember(image)  # publish just hashed every file
        self._observe("finalize", loop.time() - started)
        log.info(
            "image_written", model=alias, path=str(image.path), bytes=image.manifest.total_bytes
        )
        pruned = await asyncio.to_thread(images.prune, target.parent, target, self._protected)
        if pruned:
            log.info("images_pruned", model=alias, paths=[str(p) for p in pruned])
            self.ports.drop(*pruned)
        if upload and self.store is not None:
            entry.upload = self._spawn(self.upload(image))
        return image

    async def upload(self, image: Image) -> bool:
        """Upload `image`, retrying with back-off; False when every attempt failed."""
        if self.store is None:
            return False
        loop = asyncio.get_running_loop()
        for attempt, delay in enumerate((0.0, *self._retry_delays), start=1):
            await asyncio.sleep(delay)
            started = loop.time()
            try:
                await self.store.upload(image)
            except StoreError as exc:
                log.warning(
                    "image_upload_failed", model=image.model, attempt=attempt, error=str(exc)
                )
                continue
            self._observe("upload", loop.time() - started)
            url = self.store.url(image.model, image.version)
            log.info("image_uploaded", model=image.model, url=url)
            return True
        return False

    # ---- before and after a restore ---------------------------------------------------

    async def image_for_restore(self, alias: str, timeline: RestoreTimeline | None = None) -> Image:
        """The verified image to restore; raises NoImage (quarantining a bad one)."""
        timeline = timeline or RestoreTimeline()
        await self.settle(alias)
        timeline.mark("settle")
        entry = self.entry(alias)
        image = entry.current
        if image is None or not (image.path / images.MANIFEST).exists():
            image = await self._download(alias)
            timeline.mark("download")
        try:
            await self.verifier.check(image, timeline)
        except ImageInvalid as exc:
            raise self.quarantine(
                alias, "invalid", str(exc), failure=RestoreFailure.CORRUPT
            ) from exc
        return image

    def prepare(self, alias: str) -> None:
        """Ahead of a restore of `alias`: verify its current local image and read it into
        the page cache, in the background (`Verifier.ahead`). Called when a pre-baked
        image is adopted; the hook for a scheduler that predicts a wake (not wired yet)."""
        image = self.entry(alias).current
        if image is not None:
            self.verifier.ahead(image)

    async def _download(self, alias: str) -> Image:
        entry = self.entry(alias)
        if self.store is None or entry.remote is None:
            raise NoImage(f"no image of {alias} to restore")
        version, target = entry.remote
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            image = await self.store.download(alias, version, target)
        except StoreUnauthenticated as exc:
            entry.remote = None  # the bucket holds a forgery (or a stranger's image)
            _unauthenticated(alias, exc)
            raise NoImage(
                f"refused {alias}/{version} from the object store: {exc}",
                reason=RestoreFailure.UNAUTHENTICATED,  # who made it cannot be proven
            ) from exc
        except StoreError as exc:
            # The store's copy did not match its manifest (a failed download is deleted).
            bad = isinstance(exc.__cause__, ImageInvalid)
            failure = RestoreFailure.CORRUPT if bad else RestoreFailure.UNAVAILABLE
            raise NoImage(f"download of {alias}/{version} failed: {exc}", reason=failure) from exc
        self._observe("download", loop.time() - started)
        entry.current = image
        await self.verifier.remember(image)  # the download hashed every file
        return image

    def quarantine(
        self, alias: str, reason: str, detail: str, *, failure: RestoreFailure
    ) -> NoImage:
        """Rename the current image aside (never delete it); return the error to raise."""
        entry = self.entry(alias)
        image, entry.current = entry.current, None
        moved: Path | None = None
        if image is not None:
            try:
                moved = images.quarantine(image, reason)
            except OSError as exc:
                log.error("image_quarantine_failed", model=alias, error=str(exc))
            self.ports.drop(image.path)  # never tried again
            log.warning(
                "image_quarantined", model=alias, path=str(image.path), to=str(moved), reason=detail
            )
        return NoImage(f"{detail} (image quarantined: {moved})", quarantined=moved, reason=failure)

    def is_prebaked(self, image: Image) -> bool:
        """Named by a model's `checkpoint_path`, or made by `gpumux serve --checkpoint`."""
        return image.manifest.prebaked or image.path in self._protected

    def set_aside(self, alias: str) -> Image | None:
        """Take the current image out of rotation for this run, its files left in place.

        For an image that is not bad: a dynamic one goes with the next dump's pruning,
        a pre-baked one is adopted again at the next start."""
        entry = self.entry(alias)
        image, entry.current = entry.current, None
        return image

    def restored(self, alias: str) -> None:
        """The restored tree is healthy; with `keep_images` false its dynamic image goes."""
        entry = self.entry(alias)
        image = entry.current
        if self._keep or image is None or image.path in self._protected:
            return
        entry.current = None
        self._spawn(self._remove_after_upload(entry, image))

    async def _remove_after_upload(self, entry: _Model, image: Image) -> None:
        if entry.upload is not None:
            await asyncio.gather(entry.upload, return_exceptions=True)
        if await asyncio.to_thread(images.remove, image):
            log.info("image_removed", model=image.model, path=str(image.path))
            self.ports.drop(image.path)

    # ---- status and shutdown ----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        models = {}
        for alias, entry in self._models.items():
            image = entry.current
            models[alias] = {
                "image": str(image.path) if image else None,
                "bytes": image.manifest.total_bytes if image else None,
                "eviction": image.manifest.eviction if image else None,
                "finalizing": entry.pending is not None,
                "remote_version": entry.remote[0] if entry.remote and image is None else None,
            }
        transfers = self.store.transfers.snapshot() if self.store else {}
        return {"images_dir": str(self.root), "models": models, "transfers": transfers}

    def _spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A background task that `close` cancels."""
        return self._background.spawn(work)

    async def close(self) -> None:
        await self._background.close()
        self.ports.close()
        await self.verifier.close()
        if self.store is not None:
            self.store.close()


def _check(alias: str, manifest: Manifest, check: Callable[[Manifest], list[str]]) -> None:
    problems = check(manifest)
    if problems:
        detail = f"the image does not match {alias} here: {'; '.join(problems)}"
        raise NoImage(detail, reason=RestoreFailure.IDENTITY)


def _unauthenticated(alias: str, exc: StoreUnauthenticated) -> None:
    # The error names the image (its s3:// URL), never the key.
    log.warning("image_unauthenticated", model=alias, error=str(exc), action="cold start")


def _model_dirs(root: Path) -> list[Path]:
    try:
        return [d for d in root.iterdir() if d.is_dir()]
    except OSError:
        return []


def _sweep_staging(dirs: list[Path]) -> list[Path]:
    return [p for d in dirs for p in images.sweep_staging(d)]
