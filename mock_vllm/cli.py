"""``mock-vllm serve MODEL [vllm serve flags]``: the fake backend's command line.

Owns: the sub-command dispatch and the process exit code.
Does not: parse serve flags (``options``) or run the server (``server``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from mock_vllm.options import parse_serve_args
from mock_vllm.server import serve

USAGE = "usage: mock-vllm serve MODEL [--host H] [--port P] [vllm serve flags] [--mock-* knobs]"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] != "serve":
        print(f"mock-vllm: unknown command {args[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    return asyncio.run(serve(parse_serve_args(args[1:])))
