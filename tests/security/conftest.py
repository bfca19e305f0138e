"""Fixtures for the security suite: one daemon per module, shared by its fuzz tests.

A daemon start costs about two seconds; hypothesis runs each test body ~100 times, so
the daemon is module-scoped and each fuzz test only sends requests to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import RunningDaemon, mock_model, running_daemon
from tests.support.ports import free_port
from tests.support.security import ADMIN_TOKEN, FAST


@pytest.fixture(scope="session")
def admin_token() -> str:
    """The token of `fuzz_daemon`'s admin port."""
    return ADMIN_TOKEN


@pytest.fixture(scope="module")
def fuzz_daemon(
    tmp_path_factory: pytest.TempPathFactory, admin_token: str
) -> Iterator[RunningDaemon]:
    """gpumux with models a and b (both awake once asked) and an admin port with a token."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    models = {"a": mock_model(extra_args=FAST), "b": mock_model(extra_args=FAST)}
    with running_daemon(
        tmp,
        models,
        env={"GPUMUX_SEC_ADMIN": admin_token},
        admin_port=free_port(),
        admin_token_env="GPUMUX_SEC_ADMIN",
        max_request_body_bytes=256 * 1024,
    ) as daemon:
        yield daemon
