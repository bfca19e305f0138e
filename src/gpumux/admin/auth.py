"""The admin API's bearer token: where it comes from and how a request is checked.

Owns: `AdminToken` — read from the environment variable the config names in
`admin_token_env` (never from the JSON file), compared in constant time; a request
without a token is answered 401, one with a wrong token 403.
Does not: know about API keys (the proxy's keys are a different secret and never open
the admin API), or log tokens.

Rules (design §1, ecosystem §5):
- `admin_token_env` unset: the API is open, which config validation allows only on a
  loopback `admin_host`;
- `admin_token_env` set but the variable empty or missing: the daemon refuses to start
  (exit 2), because an operator who asked for a token must never get an open API.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping

from gpumux.core.config import Config
from gpumux.core.config_rules import ConfigProblems, is_loopback
from gpumux.core.errors import AdminTokenInvalid, AdminTokenMissing


class AdminToken:
    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @classmethod
    def from_env(
        cls, config: Config, *, serving: bool, environ: Mapping[str, str] | None = None
    ) -> AdminToken:
        """The configured token; ConfigProblems when the API would be open where it must
        not be (`serving`: the admin port will be bound, from the config or `--admin-port`).
        """
        name = config.admin_token_env
        value = (os.environ if environ is None else environ).get(name or "", "").strip()
        if serving and name and not value:
            raise ConfigProblems(
                [
                    f"admin_token_env: the environment variable {name} is empty or unset; "
                    "the admin API would be open"
                ],
                [],
            )
        if serving and not value and not is_loopback(config.admin_host):
            raise ConfigProblems(
                [f"admin_host: {config.admin_host} is not loopback and no admin token is set"],
                [],
            )
        return cls(value or None)

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, authorization: str | None) -> None:
        """Raise 401 without a bearer token, 403 with a wrong one; no-op when disabled."""
        if self._token is None:
            return
        scheme, _, presented = (authorization or "").partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise AdminTokenMissing("This admin API needs `Authorization: Bearer <token>`.")
        if not hmac.compare_digest(presented.encode(), self._token):
            raise AdminTokenInvalid("The admin token is not valid.")
