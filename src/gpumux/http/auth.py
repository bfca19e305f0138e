"""API keys for the proxy: loaded from an environment variable, compared in constant time.

Owns: the set of accepted keys and the check of what a request presents: `Authorization:
Bearer KEY` everywhere, and on the routes whose clients send it (Anthropic's, which send
`x-api-key: KEY`) that header as well.
Does not: read the environment itself (the daemon passes the value in), choose which
routes accept `x-api-key` (the proxy does), or log keys.
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

    def check(self, authorization: str | None, api_key: str | None = None) -> None:
        """Pass when the Bearer token, or `api_key` (an `x-api-key` value, where the
        route accepts one), is a configured key; else `InvalidApiKey`."""
        if not self._keys:
            return
        scheme, _, token = (authorization or "").partition(" ")
        bearer = scheme.lower() == "bearer" and self._matches(token.strip())
        # Both are compared whatever the first gave: timing says nothing about which one.
        other = api_key is not None and self._matches(api_key.strip())
        if not (bearer or other):
            raise InvalidApiKey("Incorrect API key provided.")

    def _matches(self, presented: str) -> bool:
        # Compare against every key, always: timing says nothing about which key is close.
        encoded = presented.encode()
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(encoded, key)
        return matched
