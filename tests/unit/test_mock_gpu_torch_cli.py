"""`mock-vllm --mock-gpu torch` where no GPU is: options, the memory layout, clear failures.

The torch mode itself runs in `tests/gpu` (a GPU machine); here, without torch or CUDA,
it must exit non-zero with a message saying what is missing, never fall back silently.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mock_vllm.options import GIB, parse_serve_args
from mock_vllm.torch_layout import SCRATCH_BYTES, LayoutError, default_seed, plan, weights_path

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_torch_mode_is_an_option_with_an_environment_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert parse_serve_args(["m"]).gpu == "ledger"
    opts = parse_serve_args(["m", "--mock-gpu", "torch", "--mock-seed", "0x10"])
    assert (opts.gpu, opts.seed) == ("torch", 16)
    monkeypatch.setenv("MOCK_VLLM_GPU", "torch")
    assert parse_serve_args(["m"]).gpu == "torch"


def test_an_unknown_gpu_mode_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_serve_args(["m", "--mock-gpu", "cuda"])
    assert exc.value.code == 2
    assert "must be one of ledger, torch" in capsys.readouterr().err


def test_torch_mode_models_no_latency_unless_asked() -> None:
    assert parse_serve_args(["m"]).sleep_delay > 0
    torch_mode = parse_serve_args(["m", "--mock-gpu", "torch", "--mock-model-gib", "8"])
    assert torch_mode.sleep_delay == torch_mode.startup_delay == 0
    explicit = parse_serve_args(["m", "--mock-gpu", "torch", "--mock-load-secs-per-gib", "1"])
    assert explicit.wake_delay == 1.0


def test_layout_splits_the_share_into_weights_and_kv_cache(tmp_path: Path) -> None:
    args = ["--gpu-memory-utilization", "0.25", "--mock-model-gib", "4", "--mock-gpu", "torch"]
    opts = parse_serve_args(
        ["m", *args, "--mock-residual-gib", "0.5", "--mock-weights-dir", str(tmp_path)]
    )
    layout = plan(opts, 140 * GIB)
    assert layout.weights_bytes == 4 * GIB
    share = int(0.25 * 140 * GIB)
    assert share - GIB // 2 - SCRATCH_BYTES - (2 << 20) < layout.device_bytes
    assert layout.device_bytes <= share - GIB // 2 - SCRATCH_BYTES
    assert layout.seed == default_seed("m")
    assert layout.weights_path == weights_path(tmp_path, "m", layout.seed, 4 * GIB)


def test_weights_that_do_not_fit_the_share_are_refused() -> None:
    opts = parse_serve_args(["m", "--gpu-memory-utilization", "0.1", "--mock-model-gib", "20"])
    with pytest.raises(LayoutError, match=r"leaves .* GiB"):
        plan(opts, 80 * GIB)


def test_seeds_and_file_names_are_stable_and_per_model(tmp_path: Path) -> None:
    assert default_seed("a") == default_seed("a") != default_seed("b")
    assert 0 <= default_seed("a") < 1 << 63
    path = weights_path(tmp_path, "org/Model 7B", 255, 4096)
    assert path.parent == tmp_path
    assert path.name == "org_Model_7B-00000000000000ff-4096.bin"


def _serve_torch(tmp_path: Path, prelude: str, env: dict[str, str]) -> tuple[int, str, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = prelude + textwrap.dedent(
        f"""
        from mock_vllm.cli import main
        sys.exit(main(["serve", "m", "--mock-gpu", "torch", "--port", "{port}"]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **env},
        cwd=tmp_path,
    )
    return done.returncode, done.stdout + done.stderr, port


def test_without_torch_it_exits_with_a_clear_error(tmp_path: Path) -> None:
    prelude = "import sys\nsys.modules['torch'] = None  # as if torch were not installed\n"
    code, out, _port = _serve_torch(tmp_path, prelude, {})
    assert code == 1
    assert "--mock-gpu torch needs PyTorch with CUDA" in out
    assert "Application startup complete" not in out


def test_without_a_cuda_device_it_exits_with_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        textwrap.dedent(
            """
            __version__ = "0.0+fake"
            class version:
                cuda = None
            class cuda:
                @staticmethod
                def is_available():
                    return False
            """
        )
    )
    path = os.pathsep.join([str(tmp_path / "fake"), str(REPO), os.environ.get("PYTHONPATH", "")])
    code, out, port = _serve_torch(tmp_path, "import sys\n", {"PYTHONPATH": path})
    assert code == 1
    assert "--mock-gpu torch needs a CUDA GPU, but torch 0.0+fake" in out
    with socket.socket() as sock:  # the port was never taken
        sock.bind(("127.0.0.1", port))
