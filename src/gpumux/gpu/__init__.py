"""Adapters that read GPU memory: the NVML probe and the fake ledger mock backends share.

Owns: readings. Does not: decide placement.
"""
