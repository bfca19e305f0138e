"""The scheduler's state owner: pure, clock-injected, returns commands.

Owns: slots, queues, leases and the rules that move models, as one owner
(`core.SchedulerCore`) composed of parts that each own their own fields (see
`../design.md`). Does not: await, read the clock or do I/O.
"""
