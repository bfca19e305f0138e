"""`gpumux simulate`: the real scheduler core and policies, driven in virtual time.

Owns: a discrete-event simulation (no asyncio, no sleeping) of vLLM backends, switch
operations and client load around an unmodified `SchedulerCore`, the named workloads and
JSONL traces it replays, and the per-policy report (design §5).
Does not: touch processes, GPUs or the network; the CLI wiring lives in `cli` (which
calls `simulate.command`).
"""
