"""Authenticity of CRIU images in the object store: the manifest's HMAC and its key.

Owns: the signature object stored beside each manifest (`manifest.json.hmac`: the hex
HMAC-SHA256 of the exact manifest bytes uploaded), making and checking it (constant
time), and reading the key from the environment variable that
`object_store.manifest_key_env` names (never from the JSON file; named but empty, unset
or too short is a config error: exit 2 before anything binds).
Does not: transfer anything (`s3_store` fetches the manifest bytes and their signature
and calls `verify` before it parses the manifest or downloads a single file), or log.

Why (ecosystem §5): `criu restore` runs as root and executes the image's memory, so an
image is code. The sha256 values in a manifest only prove the files match *that*
manifest, and whoever can write the bucket can rewrite both. The key lives outside the
bucket, so only its holders can make an image a daemon with the key will restore. With
no key configured images are trusted as before and `gpumux validate` warns.
The signature covers the manifest alone, which lists every file with its sha256, and
the manifest names its model and version (checked against where it was found), so
the files and the image's identity are covered too. An operator can check one by hand:
`openssl dgst -sha256 -hmac "$KEY" manifest.json`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from gpumux.checkpoint.images import MANIFEST, ImageInvalid
from gpumux.core.config import Config, ObjectStoreConfig
from gpumux.core.config_rules import ConfigProblems

#: The signature object, beside the manifest: uploaded before it, so an image that
#: looks complete (manifest present) never lacks its signature.
SIGNATURE = f"{MANIFEST}.hmac"
#: A hex HMAC-SHA256 is 64 bytes; anything much longer is not ours (read no further).
MAX_SIGNATURE_BYTES = 256
#: Shorter keys are guessable; `openssl rand -hex 32` makes a good one.
MIN_KEY_BYTES = 16


class ImageUnauthenticated(ImageInvalid):
    """An image's manifest has no valid signature under this daemon's key."""


def sign(key: bytes, manifest: bytes) -> str:
    """The hex HMAC-SHA256 of `manifest` (the exact bytes stored) under `key`."""
    return hmac.new(key, manifest, hashlib.sha256).hexdigest()


def verify(key: bytes, manifest: bytes, signature: bytes | None, *, what: str) -> None:
    """Raise ImageUnauthenticated unless `signature` is `manifest`'s under `key`.

    `signature` None means there was none. `what` names the image in the error (never
    the key).
    """
    if signature is None:
        raise ImageUnauthenticated(
            f"{what} has no {SIGNATURE}; unsigned images are refused when manifest_key_env is set"
        )
    expected = sign(key, manifest).encode()
    if not hmac.compare_digest(signature.strip().lower(), expected):
        raise ImageUnauthenticated(
            f"{what}: the manifest signature does not match "
            "(the manifest was altered, or signed with another key)"
        )


def manifest_key(
    store: ObjectStoreConfig, environ: Mapping[str, str] | None = None
) -> bytes | None:
    """The HMAC key `store` names, or None when it names none; ConfigProblems when the
    variable is named but unusable (an operator who asked for authenticated images must
    never silently get unauthenticated ones)."""
    name = store.manifest_key_env
    if not name:
        return None
    value = (os.environ if environ is None else environ).get(name, "").strip()
    where = "checkpoint.object_store.manifest_key_env"
    if not value:
        raise ConfigProblems(
            [
                f"{where}: the environment variable {name} is empty or unset; images in "
                "the object store could be neither signed nor checked"
            ],
            [],
        )
    key = value.encode()
    if len(key) < MIN_KEY_BYTES:
        raise ConfigProblems(
            [
                f"{where}: the key in {name} is shorter than {MIN_KEY_BYTES} bytes "
                "(make one with `openssl rand -hex 32`)"
            ],
            [],
        )
    return key


def check_manifest_key(config: Config, environ: Mapping[str, str] | None = None) -> None:
    """At start-up, before anything binds: raise ConfigProblems if the key is unusable."""
    store = config.checkpoint.object_store if config.checkpoint else None
    if store is not None:
        manifest_key(store, environ)
