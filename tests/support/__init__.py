"""The one home of test helpers: every tier (and bench/) imports them from here.

No test module imports another test module; a helper two tests need moves here.

- `waits`: `wait_until` / `wait_until_async`, the one polling loop with a deadline.
- `ports`: `free_port`.
- `procs`: a pid alive or not (zombies are dead), a tree's pids, SIGSTOP for a block.
- `client`: HTTP as a test client sees it: one raw exchange with the daemon (`post`,
  `Reply`), JSON calls, chat bodies, and the assertions on gpumux's OpenAI-shaped errors.
  (Not `http.py`: `echo_backend`, run as a script from this folder, would then import
  it in place of the standard library's `http`.)
- `daemon`: `gpumux serve` as a subprocess over mock backends, its log events, SDK chat.
- `metrics`: one series' value, a scrape, `promtool check metrics`.
- `backend`: the mock backend's `/mock/*` routes, its dev-route calls, async helpers for
  running `mock_vllm` without a daemon.
- `ledger`: the fake GPU ledger's bookings and a peak sampler.
- `admin`: the admin API client and its SSE reader.
- `criu`: CRIU prerequisites, checkpoint config, images, pre-bake, a pid squatter.
- `s3`: `moto_server` as a real S3 endpoint.
- `cpu_vllm`: the CPU build of vLLM for the `real_vllm` tier.
- `cdp`: headless Chromium over the DevTools protocol (the dashboard test).
- `policy_views`: hand-built `ModelView`s for the policy unit tests.
- `echo_backend`: a backend that answers with what it received (run as a script).
"""
