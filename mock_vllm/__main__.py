"""``python -m mock_vllm serve MODEL …`` works like the ``mock-vllm`` script."""

from __future__ import annotations

from mock_vllm.cli import main

raise SystemExit(main())
