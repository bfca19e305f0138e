"""`scripts/gpu-check`: the project's own check on a GPU machine with no network.

Modules: `prereqs` (what is missing, installing it from a wheel directory; stdlib only),
`plan` (sizes and the daemon config), `pinned` (the pinned-copy reference), `gputests`
(tests/gpu in both cuda-checkpoint modes), `sampler` (NVML while the daemon runs),
`drive` (the daemon, four eviction strategies, switches through the proxy), `timings`
(sleep/wake per strategy from the daemon's log), `report` (JSON + Markdown), `main`.
"""
