"""A fleet of gpumux nodes behind HAProxy (docs/fleet.md): the agent-check protocol and its
responder, the fleet file, and the `haproxy.cfg` generator. No head node: each node tells
HAProxy what it knows through its agent; HAProxy routes."""
