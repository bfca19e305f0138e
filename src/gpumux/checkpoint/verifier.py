"""Verifying images for restores, ahead of need where the daemon has the time.

Owns: this run's memo of verified images, the check a restore runs (files present and
sized, then the stamp, else a full hash that stamps the image), the same check started
in the background ahead of a restore (a pre-baked image at start, or when a wake is
predicted) followed by a readahead of the image into the page cache, and stamping images
whose files were just hashed elsewhere (a dump's publish, a download).
Does not: define the stamp or what makes an image known (`verified`), or decide what a
bad image means (the catalog quarantines it on ImageInvalid).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import structlog

from gpumux.checkpoint import images, verified
from gpumux.checkpoint.background import BackgroundTasks
from gpumux.checkpoint.images import Image, ImageInvalid
from gpumux.checkpoint.timeline import RestoreTimeline

log = structlog.get_logger(__name__)


class Verifier:
    def __init__(self) -> None:
        self.memo: verified.Memo = {}
        self._ahead: dict[Path, asyncio.Task[None]] = {}
        self._background = BackgroundTasks()

    async def check(self, image: Image, timeline: RestoreTimeline) -> None:
        """Raise ImageInvalid unless every file of `image` is there with its size and is
        as it was when it last matched its sha256 (the stamp), or matches it now."""
        ahead = self._ahead.pop(image.path, None)
        if ahead is not None:  # the same work, begun earlier: let it finish, not repeat
            await asyncio.shield(ahead)
            timeline.mark("verify_ahead")
        stats = await asyncio.to_thread(images.check_files, image)
        known = verified.is_known(image, stats, self.memo)
        timeline.mark("image_checks")
        if not known:
            await asyncio.to_thread(verified.hash_and_remember, image, stats, self.memo)
            timeline.mark("sha256")

    def ahead(self, image: Image) -> None:
        """Run `check`'s work for `image` in the background (hashing only an image never
        stamped), then read it into the page cache. Failures are left for `check`."""
        running = self._ahead.get(image.path)
        if running is None or running.done():
            self._ahead[image.path] = self._spawn(self._verify_ahead(image))

    async def _verify_ahead(self, image: Image) -> None:
        try:
            hashed = await asyncio.to_thread(verified.check_or_hash, image, self.memo)
        except (OSError, ImageInvalid) as exc:
            log.info("image_verify_ahead_failed", path=str(image.path), error=str(exc))
            return
        if not hashed:  # hashing read every page already; no restore waits for this
            self._spawn(asyncio.to_thread(verified.warm, image))

    async def remember(self, image: Image) -> None:
        """Stamp an image whose files were just hashed (publish, download), unless one
        changed since: then the next restore hashes it again (and refuses it if bad)."""
        try:
            stamped = await asyncio.to_thread(verified.remember, image, self.memo)
        except (OSError, ImageInvalid) as exc:  # the next restore hashes it instead
            log.warning("image_stamp_failed", model=image.model, error=str(exc))
            return
        if not stamped:
            log.warning("image_not_stamped", model=image.model, path=str(image.path))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return self._background.spawn(work)

    async def close(self) -> None:
        await self._background.close()
