"""Free TCP ports on loopback for the daemons, backends and servers a test starts.

Owns: `free_port`, the one way tests pick a port (bind port 0, read it, release it).
The port is free when returned; a test that starts something on it right away wins it
in practice (the kernel hands out ephemeral ports in sequence).
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
