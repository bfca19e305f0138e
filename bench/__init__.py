"""Benchmarks: each script measures gpumux side by side with a baseline in one run."""
