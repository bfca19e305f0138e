"""Adapters for cuda-checkpoint: the driver-API helper process, the CLI fallback,
suspend/resume of a tree.

Owns: toggling CUDA state of processes. Does not: decide when.
"""
