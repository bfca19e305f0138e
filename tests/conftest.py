"""Fixtures every tier shares (the integration and gpu tiers spawn real children).

Helpers live in `tests/support/` (see its `__init__`); fixtures that more than one
tier needs live here. No test module imports another test module.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gpumux.procs import Reaper
from tests.support.criu import require_criu


@pytest.fixture
async def reaper() -> AsyncIterator[Reaper]:
    """The daemon's single child reaper, installed on the test's loop for its duration."""
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    yield reaper
    reaper.uninstall()


@pytest.fixture
def criu() -> str:
    """A usable `criu` (root, >= 4.2): its path. Without one the test FAILS with the fix,
    never skips (`scripts/test` installs it). Modules of CRIU tests use it for every
    test: `pytestmark = [..., pytest.mark.usefixtures("criu")]`."""
    return require_criu()
