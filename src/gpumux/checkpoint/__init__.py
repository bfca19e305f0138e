"""Adapters for CRIU checkpoints: dump/restore, images, catalog, identity, host chores, S3.

Owns: images on disk and in object stores. Does not: decide when to checkpoint.
"""
