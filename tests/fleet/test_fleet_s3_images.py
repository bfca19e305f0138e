"""Images shared through S3: node 1 pre-bakes a CRIU image into the bucket, node 3 restores it.

A real moto_server, real CRIU (root, >= 4.2: these tests FAIL without them; `scripts/test`
installs CRIU), three real nodes and HAProxy. The model is configured on nodes 1 and 3
with the same launch (an image only restores where the launch matches); node 3 names the
image by the path it will have in its own images directory, where it is not yet. Node 3
starts it CHECKPOINTED, so its agent puts it in the asleep tier, ahead of node 1 where it
is cold: the first request goes to node 3, which downloads and restores the image.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.criu import checkpoint_section, require_criu, run_prebake
from tests.support.daemon import mock_model
from tests.support.fleet import chat_via, node_configs, running_fleet
from tests.support.s3 import AWS_ENV, BUCKET, PREFIX, moto_server

pytestmark = pytest.mark.fleet

SMALL = ["--gpu-memory-utilization", "0.3"]
PREBAKE_TIMEOUT_SECS = 60


def test_an_image_node_1_baked_into_s3_is_restored_by_node_3_on_first_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_criu()
    for name, value in AWS_ENV.items():  # the pre-bake subprocess inherits these
        monkeypatch.setenv(name, value)
    with moto_server(tmp_path) as s3:
        shared = mock_model(extra_args=SMALL)  # one launch (and port) on nodes 1 and 3
        models = {
            "n1": {"s": dict(shared)},
            "n2": {"other": mock_model(extra_args=SMALL)},
            "n3": {"s": dict(shared)},
        }
        configs = node_configs(tmp_path, models)
        for node in ("n1", "n3"):
            configs[node]["checkpoint"] = checkpoint_section(
                tmp_path / node, object_store=s3.object_store()
            )
        (tmp_path / "n1").mkdir()
        baked = run_prebake(tmp_path / "n1", configs["n1"], timeout=PREBAKE_TIMEOUT_SECS, model="s")
        assert baked.result.returncode == 0, baked.result.stderr[-3000:]
        image = baked.image
        assert image is not None
        assert f"uploaded: s3://{BUCKET}/{PREFIX}/s/{image.name}/" in baked.result.stdout
        on_node_3 = tmp_path / "n3" / "images" / "s" / image.name
        assert not on_node_3.exists()
        configs["n3"]["models"]["s"]["checkpoint_path"] = str(on_node_3)

        with running_fleet(tmp_path, configs, env=AWS_ENV) as fleet:
            fleet.haproxy.wait_state("model_s/n3.asleep", "UP")  # checkpointed: a restore
            with fleet.sdk() as sdk:
                assert chat_via(sdk, "s")[0] == "n3"
                assert chat_via(sdk, "s")[0] == "n3"
            node3 = fleet.nodes["n3"]
            downloads = [
                e
                for e in node3.log_events()
                if e.get("event") == "s3_transfer_done" and e.get("model") == "s"
            ]
            assert [e["op"] for e in downloads] == ["download"]
            restored = [
                e
                for e in node3.log_events()
                if e.get("event") == "criu_restored" and e.get("model") == "s"
            ]
            assert len(restored) == 1
            assert not [
                e
                for e in node3.log_events()
                if e.get("event") == "process_spawned" and e.get("model") == "s"
            ]  # a restore, not a cold start
            assert fleet.bring_ups("s") == [("n3", "waking")]
            assert (on_node_3 / "manifest.json").is_file()
