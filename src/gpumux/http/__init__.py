"""The proxy edge: forwarded routes, listener deadlines, API keys, passive health.

Owns: the client-facing HTTP port. Does not: own scheduler state (it reads the published
view and sends messages).
"""
