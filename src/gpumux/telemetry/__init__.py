"""Observability: Prometheus metrics, structured logs, resource readings, the observer of
scheduler events.

Owns: how gpumux reports itself. Does not: decide anything.
"""
