"""Benchmarks: each script measures gpumux side by side with a baseline in one run.

Run one as a module from the repository root, `.venv/bin/python -m bench.NAME [--quick]`:
`bench` and `tests` are then packages on the path (Python puts the working directory
first for `-m`), gpumux and mock_vllm come from the installed project, and the daemon
helpers come from `tests.support` — no script edits `sys.path`.
"""
