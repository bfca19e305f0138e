"""The pure core: config model, error taxonomy, lifecycles, eviction steps, placement.

Owns: data and rules with no I/O, no clock and no logging. Does not: import anything above it.
"""
