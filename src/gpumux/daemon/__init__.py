"""The composition root and process-level concerns: start-up, serving, shutdown, health,
reload, sdnotify, pre-bake.

Owns: wiring the parts together. Does not: hold scheduling rules.
"""
