"""Free TCP ports on loopback for the daemons, backends and servers a test starts.

Owns: `free_port`, the one way tests pick a port (bind port 0, read it, release it), and
the record of ports it handed out recently.
The port is free when returned. The kernel may hand the same ephemeral port to two
binds in a row once the first socket is closed (seen on a busy machine: one config got
the same port for a model and the metrics listener), so a port handed out is not handed
out again until many others have been.
"""

from __future__ import annotations

import socket
from collections import deque

#: Ports given out lately, oldest first: far more than one test ever asks for.
_RECENT: deque[int] = deque(maxlen=4096)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and that no recent call
    in this process returned."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _RECENT:
            _RECENT.append(port)
            return port
