"""`gpumux simulate`: the real scheduler core, policies and orchestrator, in virtual time.

Owns: a discrete-event simulation (no asyncio, no sleeping) of vLLM backends, the effects
of switch steps on them, and client load around an unmodified `SchedulerCore` and
`Orchestrator`, the named workloads and JSONL traces it replays, and the per-policy
report (design §5).
Does not: touch processes, GPUs or the network; the CLI wiring lives in `cli` (which
calls `simulate.command`).
"""
