"""Image directories: manifest last, private modes, verification, quarantine, pruning."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gpumux.checkpoint import images
from gpumux.checkpoint.images import ImageInvalid
from tests.support.images import fields, make_image

pytestmark = pytest.mark.unit


def test_publish_writes_manifest_and_appears_by_rename(tmp_path: Path) -> None:
    image = make_image(tmp_path, "v1")
    assert image.path == tmp_path / "a" / "v1"
    assert not list((tmp_path / "a").glob(".staging-*"))
    names = [f.path for f in image.manifest.files]
    assert names == ["core-10.img", "pages-1.img", "shm/psm_1"]
    assert image.manifest.total_bytes == 10_164
    assert images.read(image.path) == image
    assert image.manifest.weights == "discard"


def test_directories_are_0700_and_files_0600(tmp_path: Path) -> None:
    image = make_image(tmp_path, "v1")
    for path in [image.path, *image.path.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path


def test_staging_without_manifest_is_never_an_image_and_is_swept(tmp_path: Path) -> None:
    staging = images.staging_dir(tmp_path / "a" / "v2")
    (staging / "pages-1.img").write_bytes(b"half")
    assert images.latest(tmp_path / "a") is None
    assert images.read(staging) is None
    assert images.sweep_staging(tmp_path / "a") == [staging]
    assert not staging.exists()


def test_a_version_dir_without_manifest_does_not_count(tmp_path: Path) -> None:
    make_image(tmp_path, "v1")
    (tmp_path / "a" / "v9").mkdir()  # newer by name, but no manifest
    latest = images.latest(tmp_path / "a")
    assert latest is not None
    assert latest.version == "v1"


def test_verify_catches_missing_truncated_and_altered_files(tmp_path: Path) -> None:
    image = make_image(tmp_path, "v1")
    images.verify(image, checksums=True)
    pages = image.path / "pages-1.img"
    pages.write_bytes(b"q" * 10_000)  # same size
    images.verify(image, checksums=False)
    with pytest.raises(ImageInvalid, match="sha256 mismatch"):
        images.verify(image, checksums=True)
    pages.write_bytes(b"q")
    with pytest.raises(ImageInvalid, match="1 bytes, manifest says 10000"):
        images.verify(image, checksums=False)
    pages.unlink()
    with pytest.raises(ImageInvalid, match=r"pages-1\.img"):
        images.verify(image, checksums=False)


def test_quarantine_renames_aside_and_latest_skips_it(tmp_path: Path) -> None:
    old = make_image(tmp_path, "v1")
    new = make_image(tmp_path, "v2")
    moved = images.quarantine(new, "restore failed: Can't fork")
    assert moved.name == "v2.quarantined-restore-failed-can-t-fork"
    assert (moved / "manifest.json").is_file()
    assert images.latest(tmp_path / "a") == old
    again = images.quarantine(old, "restore failed: Can't fork")
    assert again.name == "v1.quarantined-restore-failed-can-t-fork"


def test_prune_keeps_the_new_one_prebaked_and_protected(tmp_path: Path) -> None:
    prebaked = make_image(tmp_path, "v1", prebaked=True)
    protected = make_image(tmp_path, "v2")
    stale = make_image(tmp_path, "v3")
    keep = make_image(tmp_path, "v4")
    gone = images.prune(tmp_path / "a", keep.path, {protected.path})
    assert gone == [stale.path]
    assert images.versions(tmp_path / "a") == [prebaked.path, protected.path, keep.path]
    assert images.remove(prebaked) is False
    assert prebaked.path.exists()
    assert images.remove(keep) is True


def test_resolve_takes_an_image_or_a_model_dir(tmp_path: Path) -> None:
    make_image(tmp_path, "v1")
    v2 = make_image(tmp_path, "v2")
    assert images.resolve(v2.path) == v2
    assert images.resolve(tmp_path / "a") == v2
    assert images.resolve(tmp_path / "nothing") is None


def test_install_checks_a_download_against_its_manifest(tmp_path: Path) -> None:
    source = make_image(tmp_path / "src", "v1")
    target = tmp_path / "dst" / "a" / "v1"
    staging = images.staging_dir(target)
    for entry in source.manifest.files:
        (staging / entry.path).parent.mkdir(exist_ok=True)
        (staging / entry.path).write_bytes((source.path / entry.path).read_bytes())
    (staging / "pages-1.img").write_bytes(b"x" * 10_000)
    with pytest.raises(ImageInvalid, match="sha256"):
        images.install(staging, target, source.manifest)
    assert not target.exists()
    (staging / "pages-1.img").write_bytes((source.path / "pages-1.img").read_bytes())
    installed = images.install(staging, target, source.manifest)
    assert images.read(target) == installed


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd", "a/../../b", "", "./x"])
def test_manifest_paths_must_stay_inside_the_image(path: str) -> None:
    entry = {"path": path, "size": 1, "sha256": "0" * 64}
    with pytest.raises(ValueError, match="leaves the image"):
        images.Manifest.model_validate({**fields(), "version": "v", "files": [entry]})


@pytest.mark.parametrize("shm", ["/etc/shadow", "/dev/shm/../etc/x", "/dev/shm/a/b", "/dev/shm/.."])
def test_manifest_shm_files_must_be_plain_names_in_dev_shm(shm: str) -> None:
    with pytest.raises(ValueError, match="directly in /dev/shm"):
        images.Manifest.model_validate({**fields(shm_files=[shm]), "version": "v", "files": []})


def test_listening_ports_are_recorded_and_older_manifests_have_none() -> None:
    old = images.Manifest.model_validate({**fields(), "version": "v", "files": []})
    assert old.listen_ports == []
    assert old.bound_ports == {old.port}  # a restore of an older image checks its port only
    listeners = [{"host": "127.0.0.1", "port": 41000}, {"host": "::", "port": 41001}]
    new = images.Manifest.model_validate(
        {**fields(), "listen_ports": listeners, "version": "v", "files": []}
    )
    assert [(x.host, x.port) for x in new.listen_ports] == [("127.0.0.1", 41000), ("::", 41001)]
    assert new.bound_ports == {old.port, 41000, 41001}
    again = images.Manifest.model_validate_json(new.model_dump_json())
    assert again == new


@pytest.mark.parametrize(
    "listener",
    [{"host": "localhost", "port": 80}, {"host": "127.0.0.1", "port": 0}, {"host": "::1"}],
)
def test_manifest_listeners_are_addresses_and_ports(listener: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - pydantic words each case its own way
        images.Manifest.model_validate(
            {**fields(), "listen_ports": [listener], "version": "v", "files": []}
        )


@pytest.mark.parametrize(
    "path", ["manifest.json", ".manifest.json.tmp", "shm/.hidden", "stats-dump"]
)
def test_manifest_paths_must_be_image_files(path: str) -> None:
    """A manifest may not list the manifest itself (or CRIU's or our own bookkeeping)."""
    entry = {"path": path, "size": 1, "sha256": "0" * 64}
    with pytest.raises(ValueError, match="not an image file"):
        images.Manifest.model_validate({**fields(), "version": "v", "files": [entry]})


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("20260101T000000000000Z", True),
        ("v1.2_x-y", True),
        ("..", False),
        (".", False),
        ("", False),
        (".hidden", False),
        ("a/b", False),
        ("/abs", False),
        ("a\nb", False),
        ("x" * 200, False),
    ],
)
def test_safe_name_is_one_plain_path_segment(name: str, safe: bool) -> None:
    assert images.safe_name(name) is safe


def test_verify_refuses_symlinks_to_files_or_directories(tmp_path: Path) -> None:
    """A symlink in an image could point a root-run restore (or the hashing) elsewhere."""
    image = make_image(tmp_path, "v1")
    outside = tmp_path / "outside"
    outside.mkdir()
    pages = image.path / "pages-1.img"
    (outside / "pages-1.img").write_bytes(pages.read_bytes())
    pages.unlink()
    pages.symlink_to(outside / "pages-1.img")  # same bytes, so only the link is wrong
    with pytest.raises(ImageInvalid, match=r"pages-1\.img is a symlink"):
        images.verify(image, checksums=True)
    pages.unlink()
    pages.write_bytes(b"p" * 10_000)
    images.verify(image, checksums=True)
    shm = image.path / "shm"
    (shm / "psm_1").rename(outside / "psm_1")
    shm.rmdir()
    shm.symlink_to(outside, target_is_directory=True)
    with pytest.raises(ImageInvalid, match="shm is a symlink"):
        images.verify(image, checksums=False)


def test_verify_refuses_a_listed_path_that_is_not_a_regular_file(tmp_path: Path) -> None:
    image = make_image(tmp_path, "v1")
    pages = image.path / "pages-1.img"
    pages.unlink()
    pages.mkdir()
    with pytest.raises(ImageInvalid, match="not a regular file"):
        images.verify(image, checksums=False)
