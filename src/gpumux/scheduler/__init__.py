"""Coordination: the scheduler's state owner, its runner task, the orchestrator and the
published view.

Owns: every decision about queues, leases and model states. Does not: touch processes, HTTP
or the clock directly (the runner injects the clock; effects go through the `Effects`
protocol).
"""
