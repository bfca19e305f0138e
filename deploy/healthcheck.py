"""The image's HEALTHCHECK: GET /health on the proxy port the config names (stdlib only).

Exit 0 when gpumux answers 200, 1 otherwise (Docker's healthy/unhealthy). The port and
bind address come from the same file `gpumux serve` reads (GPUMUX_CONFIG, default
/etc/gpumux/config.json); a wildcard bind is checked on loopback.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

WILDCARDS = {"", "0.0.0.0", "::"}


def health_url(config_path: str) -> str:
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    host = str(config.get("host", "0.0.0.0"))
    if host in WILDCARDS:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{int(config.get('port', 3000))}/health"


def main() -> int:
    url = health_url(os.environ.get("GPUMUX_CONFIG", "/etc/gpumux/config.json"))
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"{url}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
