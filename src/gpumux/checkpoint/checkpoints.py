"""CRIU checkpoints of backend trees: the dump and restore sequences.

Owns: the dump sequence (inventory the tree for io_uring, open TCP sockets, /dev/shm
files and listening sockets, `criu dump` into a staging directory, copy the tree's
/dev/shm files into it, reserve its listening ports (`reserved_ports`), hand it to the
catalog to become an image off the switch path, recording the model's and host's
identity) and the restore sequence (get a verified image from the catalog, check that
it was made for this model, launch and host, that its pids, the model's port and every
port its tree listened on are free, put its /dev/shm files back, `criu restore`); the
identity check of pre-baked images at start; and what a failed restore does to its
image, with its `reason` reported for `gpumux_checkpoint_restore_failures_total`.
Does not: kill, reap, adopt or health-check trees (`backends` does that around these
calls), keep track of images (`image_catalog`), or decide when to checkpoint.

A failed restore always ends in a cold start, and the image is never tried again by this
run. Whether it is also renamed aside (quarantined, kept for diagnosis, never deleted)
depends on whose fault it was:
- the image's (corrupt, criu_error, timeout, unhealthy): quarantined, pre-baked or not;
- the host's (pid_collision, port_busy): left in place. A taken pid or port says nothing
  about the image, and a pre-baked one renamed aside would be lost to every later start
  for a condition that may be gone in a minute; a dynamic one is pruned by the next dump.
  CRIU's own "Can't fork for PID: File exists" and "Can't bind inet socket: Address
  already in use" (taken after the check) count here. The ports include the ones vLLM's
  tree listens on internally, which the kernel picked from the ephemeral range;
- identity (made for another model/launch/host): checked before CRIU ever runs. A
  pre-baked image is left in place (the operator may put the config back; each start
  says so and cold-starts), a dynamic one can never match again and is quarantined.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from collections.abc import Callable
from pathlib import Path

import structlog

from gpumux.checkpoint import criu, images
from gpumux.checkpoint.catalog import ImageCatalog, NoImage, OpObserver, RestoreFailure
from gpumux.checkpoint.criu_inventory import describe_io_uring, io_uring_users, shm_files
from gpumux.checkpoint.host_io import (
    CopyFailed,
    copy_all,
    describe_busy,
    driver_version,
    pids_and_ports_free,
    quiet_tcp_after,
    restore_addresses,
    shm_copy_name,
    wait_pids_free,
)
from gpumux.checkpoint.identity import HostIdentity, ModelIdentity, mismatches
from gpumux.checkpoint.images import Image
from gpumux.checkpoint.reserved_ports import RESERVED_PORTS, PortReservations
from gpumux.checkpoint.s3.store import S3Store
from gpumux.checkpoint.timeline import RestoreTimeline
from gpumux.core.config import CheckpointConfig, WeightStrategy
from gpumux.core.port_ranges import bound_ports
from gpumux.procs import AdoptFailed, BackendProcess, Reaper, adopt, kill_tree, tree_pids

log = structlog.get_logger(__name__)

#: How long a dump waits for connections into the tree to close: gpumux's own pools
#: close at once, any other keep-alive client within its 4 s idle timeout.
TCP_DRAIN_SECS = 5.0
#: How long a restore waits for the image's pids to be reaped and free.
PID_FREE_WAIT_SECS = 5.0
#: Whose fault a failed restore was: the image's is quarantined (see the docstring).
IMAGE_AT_FAULT = frozenset(
    {
        RestoreFailure.CORRUPT,
        RestoreFailure.CRIU_ERROR,
        RestoreFailure.TIMEOUT,
        RestoreFailure.UNHEALTHY,
    }
)

#: Told (model, reason) of every failed restore: the daemon counts them.
FailureObserver = Callable[[str, str], None]


class CheckpointFailed(Exception):
    """A dump or restore did not happen; `detail` is safe to show to operators."""

    def __init__(
        self,
        detail: str,
        *,
        quarantined: Path | None = None,
        reason: RestoreFailure | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.quarantined = quarantined
        self.reason = reason  # set for restores


class Checkpoints:
    def __init__(
        self,
        checkpoint: CheckpointConfig,
        *,
        log_dir: Path,
        store: S3Store | None = None,
        observe: OpObserver | None = None,
        on_restore_failure: FailureObserver | None = None,
        reserved_ports: Path = RESERVED_PORTS,
    ) -> None:
        self.config = checkpoint
        self.settings = criu.CriuSettings(
            criu_path=checkpoint.criu_path,
            plugin_dir=checkpoint.cuda_plugin_dir,
            dump_timeout_secs=checkpoint.dump_timeout_secs,
            restore_timeout_secs=checkpoint.restore_timeout_secs,
        )
        self._observe = observe or (lambda _op, _secs: None)
        self._on_failure = on_restore_failure or (lambda _model, _reason: None)
        if store is None and checkpoint.object_store is not None:
            store = S3Store(checkpoint.object_store)
        self.catalog = ImageCatalog(
            Path(checkpoint.images_dir),
            keep_images=checkpoint.keep_images,
            store=store,
            observe=self._observe,
            ports=PortReservations(reserved_ports),
        )
        self._log_dir = log_dir
        self._criu_version: str | None = None
        #: Set by `gpumux serve --checkpoint`: images made now are pre-baked (kept
        #: forever, uploaded by the caller rather than in the background).
        self.prebake = False

    async def dump(
        self,
        alias: str,
        process: BackendProcess,
        *,
        eviction: str,
        identity: ModelIdentity,
    ) -> asyncio.Task[Image | None]:
        """Dump the tree (CRIU kills it on success); return the task finalising the image.

        Raises CheckpointFailed, after which the tree is as it was (a failed dump is
        non-destructive) unless it died on its own.
        """
        await self.catalog.settle(alias)  # one image in the making per model
        await asyncio.to_thread(self._log_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
        pids = await tree_pids(process.pid)
        if not pids:
            raise CheckpointFailed("the backend process is gone")
        uring = await asyncio.to_thread(io_uring_users, pids)
        if uring:
            raise CheckpointFailed(describe_io_uring(uring))
        leftovers, listening = await quiet_tcp_after(pids, TCP_DRAIN_SECS)
        shm = await asyncio.to_thread(shm_files, pids)
        version = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.catalog.root / alias / version
        staging = await asyncio.to_thread(images.staging_dir, target)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            log_file = self._log_dir / f"{alias}.criu-dump.log"
            multi = identity.tp > 1  # TP workers talk over TCP inside the tree
            await criu.dump(self.settings, process.pid, staging, log_file, tcp_established=multi)
            # Kill mode leaves the files on /dev/shm exactly as they were at the freeze.
            await copy_all([(Path(path), staging / shm_copy_name(path)) for path in shm])
        except (criu.CriuError, CopyFailed) as exc:
            await asyncio.to_thread(images.discard_staging, staging)
            state = "still running" if not process.exited.done() else "gone"
            tcp = f"; TCP sockets open at the dump: {'; '.join(leftovers)}" if leftovers else ""
            detail = f"{exc}{tcp} (the tree is {state})"
            log.warning("criu_dump_failed", model=alias, pid=process.pid, error=detail)
            raise CheckpointFailed(detail) from exc
        # The image holds the copies and a restore puts them back; the originals would
        # only pile up on /dev/shm (the dumped tree is dead: kill mode).
        for path in shm:
            await asyncio.to_thread(Path(path).unlink, missing_ok=True)
        secs = loop.time() - started
        self._observe("dump", secs)
        log.info("criu_dumped", model=alias, pid=process.pid, secs=round(secs, 3), shm=shm)
        # At once, not when the image is written: the ports are free from now on.
        ports = bound_ports(identity.port, (port for _host, port in listening))
        self.catalog.ports.need(target, ports, lasting=self.prebake)
        host = await self.host_identity()
        fields: dict[str, object] = {
            "model": alias,
            "model_path": identity.model_path,
            "launch": identity.launch,
            "created": datetime.datetime.now(datetime.UTC).isoformat(),
            "eviction": eviction,
            "tp": identity.tp,
            "port": identity.port,
            "pids": pids,
            "shm_files": shm,
            "listen_ports": [{"host": address, "port": port} for address, port in listening],
            "criu_version": host.criu_version,
            "kernel": host.kernel,
            "driver_version": host.driver_version,
            "prebaked": self.prebake,
        }
        upload = not self.prebake
        return self.catalog.finalize_later(alias, staging, target, fields, upload=upload)

    async def restore(
        self, alias: str, identity: ModelIdentity, timeline: RestoreTimeline | None = None
    ) -> int:
        """Restore the model's image; return the restored root pid (already our child).

        Raises CheckpointFailed with a `reason`, after which the image is out of rotation.
        `timeline`, when given, gets each phase's duration.
        """
        timeline = timeline or RestoreTimeline()
        if not self._log_dir.is_dir():  # a stat; the thread hop only the first time
            await asyncio.to_thread(self._log_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
        timeline.mark("log_dir")
        try:
            image = await self.catalog.image_for_restore(alias, timeline)
        except NoImage as exc:
            self._report(alias, exc.reason, exc.detail, exc.quarantined, "quarantined")
            raise CheckpointFailed(
                exc.detail, quarantined=exc.quarantined, reason=exc.reason
            ) from exc
        # Before anything touches the host: never restore a process made for another
        # model, launch or host (it would answer as the wrong model, or on the wrong port).
        problems = mismatches(image.manifest, identity, await self.host_identity())
        timeline.mark("identity")
        if problems:
            detail = f"the image does not match {alias} here: {'; '.join(problems)}"
            raise self._failed(alias, image, RestoreFailure.IDENTITY, detail)
        pids = image.manifest.pids
        listened = [(x.host, x.port) for x in image.manifest.listen_ports]
        addresses = restore_addresses(identity.port, listened)
        taken, busy = await pids_and_ports_free(pids, addresses, PID_FREE_WAIT_SECS)
        timeline.mark("pids_port_free")
        if taken:
            detail = f"the image's pids are taken: {taken}"
            raise self._failed(alias, image, RestoreFailure.PID_COLLISION, detail)
        if busy:
            detail = f"ports the image listens on are in use: {await describe_busy(busy)}"
            raise self._failed(alias, image, RestoreFailure.PORT_BUSY, detail)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            shm = image.manifest.shm_files
            await copy_all([(image.path / shm_copy_name(path), Path(path)) for path in shm])
            timeline.mark("shm_copy_in")
            pid = await criu.restore(
                self.settings,
                image.path,
                self._log_dir / f"{alias}.criu-restore.log",
                self._log_dir / f".{alias}.criu-restore.pid",
                tcp_established=identity.tp > 1,
            )
        except (criu.CriuError, CopyFailed) as exc:
            # A failed restore leaves zombies of ours on the image's pids; reap first,
            # or the next attempt fails with "Can't fork for PID: File exists".
            await wait_pids_free(image.manifest.pids, PID_FREE_WAIT_SECS)
            reason = RestoreFailure.CRIU_ERROR
            if isinstance(exc, criu.CriuError) and exc.pid_collision:
                reason = RestoreFailure.PID_COLLISION
            elif isinstance(exc, criu.CriuError) and exc.port_busy:
                reason = RestoreFailure.PORT_BUSY
            elif isinstance(exc, criu.CriuError) and exc.timed_out:
                reason = RestoreFailure.TIMEOUT
            raise self._failed(alias, image, reason, str(exc)) from exc
        timeline.mark("criu")
        secs = loop.time() - started
        self._observe("restore", secs)
        log.info("criu_restored", model=alias, pid=pid, path=str(image.path), secs=round(secs, 3))
        return pid

    async def evict(
        self, alias: str, process: BackendProcess, *, eviction: str, identity: ModelIdentity
    ) -> asyncio.Task[Image | None]:
        """`dump`, then make sure every member of the dumped tree is gone and reaped.

        No SIGTERM: a graceful vLLM stop unlinks the /dev/shm files the image needs.
        """
        task = await self.dump(alias, process, eviction=eviction, identity=identity)
        await kill_tree(process, grace_secs=0, graceful=False)
        return task

    async def bring_back(
        self,
        alias: str,
        identity: ModelIdentity,
        *,
        log_path: Path,
        reaper: Reaper,
        timeline: RestoreTimeline | None = None,
    ) -> BackendProcess:
        """`restore`, then adopt the restored root (our child, as we are its subreaper)."""
        timeline = timeline or RestoreTimeline()
        pid = await self.restore(alias, identity, timeline)
        try:
            process = await adopt(pid, model=alias, log_path=log_path, reaper=reaper)
            timeline.mark("adopt")
            return process
        except AdoptFailed as exc:
            self.restore_failed(alias, str(exc))
            raise CheckpointFailed(
                f"restored pid {pid} could not be adopted: {exc}", reason=RestoreFailure.UNHEALTHY
            ) from exc

    def restore_failed(self, alias: str, reason: str) -> None:
        """The restored tree never became healthy: its image is not tried again."""
        image = self.catalog.entry(alias).current
        self._failed(alias, image, RestoreFailure.UNHEALTHY, reason)

    async def adopt_prebaked(
        self, alias: str, path: Path, identity: ModelIdentity
    ) -> WeightStrategy | None:
        """At start: the weights of `alias`'s pre-baked image if it is usable, else None.

        An image made for another model, launch or host is not adopted (and not moved):
        the model starts stopped and cold-starts, and the start-up log says why.
        """
        host = await self.host_identity()
        try:
            return await self.catalog.adopt_prebaked(
                alias, path, lambda manifest: mismatches(manifest, identity, host)
            )
        except NoImage as exc:
            if exc.reason is RestoreFailure.IDENTITY:
                log.warning(
                    "prebaked_image_rejected",
                    model=alias,
                    path=str(path),
                    reason=exc.reason.value,
                    error=exc.detail,
                    action="cold start; re-bake with `gpumux serve CONFIG --checkpoint MODEL`",
                )
            self._on_failure(alias, exc.reason.value)
            return None

    def _failed(
        self, alias: str, image: Image | None, reason: RestoreFailure, detail: str
    ) -> CheckpointFailed:
        """Take `image` out of rotation (quarantined or left, per the docstring), log and
        report the failure; return the error to raise."""
        quarantine = image is not None and (
            reason in IMAGE_AT_FAULT
            or (reason is RestoreFailure.IDENTITY and not self.catalog.is_prebaked(image))
        )
        if quarantine:
            moved = self.catalog.quarantine(alias, f"restore-{reason}", detail, failure=reason)
            self._report(alias, reason, detail, moved.quarantined, "quarantined")
            return CheckpointFailed(moved.detail, quarantined=moved.quarantined, reason=reason)
        self.catalog.set_aside(alias)
        self._report(alias, reason, detail, image.path if image else None, "left in place")
        return CheckpointFailed(f"{detail} (image left in place)", reason=reason)

    def _report(
        self, alias: str, reason: RestoreFailure, detail: str, path: Path | None, image: str
    ) -> None:
        log.warning(
            "criu_restore_failed",
            model=alias,
            reason=reason.value,
            error=detail,
            image=image if path is not None else "none",
            path=str(path) if path is not None else None,
        )
        self._on_failure(alias, reason.value)

    async def host_identity(self) -> HostIdentity:
        return HostIdentity(
            kernel=os.uname().release,
            criu_version=await self.criu_version(),
            driver_version=driver_version(),
        )

    async def housekeeping(self) -> None:
        """At start: say loudly if CRIU cannot work here, then tidy images and uploads."""
        problem = await criu.check(self.settings)
        if problem is not None:
            log.error("criu_check_failed", criu=self.settings.criu_path, error=problem)
        else:
            log.info("criu_check_passed", version=await self.criu_version())
        await self.catalog.housekeeping()

    async def criu_version(self) -> str:
        if self._criu_version is None:
            self._criu_version = await criu.version(self.settings)
        return self._criu_version

    async def close(self) -> None:
        await self.catalog.close()
