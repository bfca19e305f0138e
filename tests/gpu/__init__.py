"""The gpu tier: tests and the `scripts/gpu-check` run for a machine with an NVIDIA GPU."""
