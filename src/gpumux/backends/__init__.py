"""Adapters for one model's backend: the real `Effects`, the vLLM control client, upstream pools.

Owns: talking to `vllm serve` processes. Does not: decide when a step runs.
"""
