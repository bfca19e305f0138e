"""A LoRA adapter on the real CPU vLLM through gpumux: generated here (PEFT layout, seeded,
rank 8 on q_proj/v_proj), loaded by gpumux through vLLM's runtime API at its first
request, answering through the openai SDK; kept across a CRIU dump and restore (the same
process comes back with its memory, so gpumux does not load it again); loaded again
after a stop and cold start.

vLLM 0.32's CPU build serves LoRA (`--enable-lora --max-lora-rank 8`). Level-2 sleep is
refused on CPU, so the evictions here are CRIU (`retain+checkpoint`) and a restart. Needs
root, CRIU >= 4.2 and `kernel.io_uring_disabled=2` like `test_criu.py`; `scripts/test`
provides them.
"""

from __future__ import annotations

import pytest

from tests.support.admin import Admin
from tests.support.client import get_json
from tests.support.cpu_vllm import (
    STARTUP_TIMEOUT_SECS,
    RealVllm,
    backend_log,
    backend_tree,
    complete,
    vllm_daemon,
    vllm_model,
)
from tests.support.criu import checkpoint_section
from tests.support.daemon import events
from tests.support.lora import tiny_adapter
from tests.support.ports import free_port
from tests.support.waits import wait_until

pytestmark = pytest.mark.real_vllm

CHECKPOINT = {"weights": "retain", "process": "checkpoint"}
LORA_ARGS = ["--enable-lora", "--max-lora-rank", "8", "--max-loras", "1"]
#: What vLLM logs when its runtime API loads an adapter (once per load).
LOADED_LINE = "Loaded new LoRA adapter: name 'sql-lora'"


@pytest.mark.timeout(3 * STARTUP_TIMEOUT_SECS + 240)
def test_a_generated_adapter_answers_and_survives_criu_and_a_restart(
    real_vllm: RealVllm, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Short: vLLM's ZMQ ipc paths under TMPDIR must fit in 107 characters.
    tmp_path = tmp_path_factory.mktemp("lora")
    python = real_vllm.vllm.parent / "python"
    adapter = tiny_adapter(python, real_vllm.model_dir("tiny-a"), tmp_path / "sql-lora", seed=7)
    model = vllm_model(real_vllm, tmp_path / "v", eviction=CHECKPOINT)
    model["extra_args"] = [*model["extra_args"], *LORA_ARGS]
    model["adapters"] = {"sql-lora": str(adapter)}
    with vllm_daemon(
        tmp_path,
        real_vllm,
        {"tiny": model},
        admin_port=free_port(),
        checkpoint=checkpoint_section(tmp_path),
    ) as daemon:
        admin = Admin(daemon)
        text = complete(daemon, "sql-lora", "Hello there")
        assert text
        assert complete(daemon, "tiny", "Hello there")  # the base model beside it
        assert backend_log(daemon, "tiny").count(LOADED_LINE) == 1
        listed = {m["id"]: m for m in get_json(daemon.url + "/v1/models")["data"]}
        assert listed["sql-lora"]["parent"] == "tiny"
        # vLLM's own listing agrees: the adapter is served under its name by `tiny`.
        backend = {m["id"]: m for m in get_json(daemon.backend_url("tiny") + "/v1/models")["data"]}
        assert backend["sql-lora"]["parent"] == "tiny"
        assert backend["sql-lora"]["root"] == str(adapter)

        # CRIU: the dumped process comes back with the adapter still loaded.
        root = backend_tree(daemon, "tiny")[0].pid
        assert admin.post("/api/models/tiny/evict")[0] == 200
        wait_until(
            lambda: events(daemon, "criu_dumped", model="tiny"),
            timeout=120,
            what="the CRIU dump of the tree",
        )
        assert complete(daemon, "sql-lora", "Hello there") == text
        assert backend_tree(daemon, "tiny")[0].pid == root
        assert backend_log(daemon, "tiny").count(LOADED_LINE) == 1
        assert len(events(daemon, "adapter_loaded", model="tiny")) == 1

        # A restart (stop, cold start): a new process, so gpumux loads the adapter again.
        # The call answers once the new process is up: a cold start on 2 busy cores.
        restart = admin.post("/api/models/tiny/restart", timeout=STARTUP_TIMEOUT_SECS)
        assert restart[0] == 200
        assert complete(daemon, "sql-lora", "Hello there") == text
        assert backend_tree(daemon, "tiny")[0].pid != root
        assert backend_log(daemon, "tiny").count(LOADED_LINE) == 2
        assert len(events(daemon, "adapter_loaded", model="tiny")) == 2
