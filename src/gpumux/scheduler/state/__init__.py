"""The scheduler's state owner: pure, clock-injected, returns commands.

Owns: slots, queues, leases and the rules that move models. Does not: await, read the clock
or do I/O.
"""
