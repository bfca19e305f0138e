"""Constants the security suite's daemons share: the admin token and fast mock backends."""

from __future__ import annotations

#: The admin token of the security suite's daemons (passed through GPUMUX_SEC_ADMIN).
ADMIN_TOKEN = "sec-admin-token-5d1e"
#: Fast, small backends that fit together on one fake GPU (fuzzing never forces a switch).
FAST = ["--gpu-memory-utilization", "0.45", "--mock-tokens-per-sec", "100000"]
