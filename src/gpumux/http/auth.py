"""API keys for the proxy: loaded from an environment variable, compared in constant time.

Owns: the set of accepted keys and the Bearer check.
Does not: read the environment itself (the daemon passes the value in) or log keys.
"""

from __future__ import annotations

import hmac

from gpumux.core.errors import InvalidApiKey


class ApiKeys:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys if k]

    @classmethod
    def from_env_value(cls, value: str | None) -> ApiKeys:
        """Keys separated by commas or whitespace; None or empty means auth is off."""
        if not value:
            return cls([])
        return cls(value.replace(",", " ").split())

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> None:
        if not self._keys:
            return
        scheme, _, token = (authorization or "").partition(" ")
        presented = token.strip().encode()
        # Compare against every key, always: timing says nothing about which key is close.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        if scheme.lower() != "bearer" or not matched:
            raise InvalidApiKey("Incorrect API key provided.")
