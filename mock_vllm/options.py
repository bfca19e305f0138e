"""The ``serve`` command line: the vLLM flags the mock honours, its own ``--mock-*`` knobs.

Owns: argparse for ``mock-vllm serve MODEL [flags]``, the ``MOCK_VLLM_<NAME>`` environment
fallback of every mock knob, and the derived latencies (all proportional to model size).
Does not: start anything. Unknown vLLM flags are returned, not rejected, because gpumux
passes operators' ``extra_args`` through untouched.

Precedence per knob: flag > environment variable > default. With ``--mock-gpu torch`` the
modelled latencies default to zero (``--mock-load-secs-per-gib 0``): the copies are real.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mock_vllm.faults import FAULT_PARSERS, Faults, parse_bool, parse_secs

ENV_PREFIX = "MOCK_VLLM_"
GIB = 1 << 30
GPU_MODES = ("ledger", "torch")


def _opt_secs(value: object) -> float | None:
    if value is None or str(value).strip().lower() in ("", "none", "null"):
        return None
    return parse_secs(value)


def _positive_float(value: object) -> float:
    result = parse_secs(value)
    if result <= 0:
        raise ValueError(f"must be > 0: {value!r}")
    return result


def _gpu_mode(value: object) -> str:
    text = str(value).strip().lower()
    if text not in GPU_MODES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(GPU_MODES)}: {value!r}")
    return text


def _opt_seed(value: object) -> int | None:
    if value is None or str(value).strip().lower() in ("", "none", "null"):
        return None
    return int(str(value).strip(), 0)


def _opt_path(value: object) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def _count(value: object) -> int:
    # vLLM accepts human-readable lengths such as "32k"; only the simple suffixes here.
    text = str(value).strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


# Profile knobs (fixed for the life of the process): name -> (parser, default, help).
PROFILE_KNOBS: dict[str, tuple[Callable[[object], object], object, str]] = {
    "model_gib": (_positive_float, 1.0, "model weight size; scales every latency"),
    "load_secs_per_gib": (parse_secs, 0.02, "seconds per GiB for load/sleep/wake/reload"),
    "startup_secs": (_opt_secs, None, "startup delay (default model_gib x rate)"),
    "sleep_secs": (_opt_secs, None, "sleep latency (default model_gib x rate)"),
    "wake_secs": (_opt_secs, None, "wake latency (default model_gib x rate)"),
    "reload_secs": (_opt_secs, None, "reload_weights latency (default model_gib x rate)"),
    "tokens_per_sec": (_positive_float, 200.0, "decode speed"),
    "ttft_ms": (parse_secs, 5.0, "first-token latency in milliseconds"),
    "residual_gib": (parse_secs, 0.5, "GPU memory kept per rank while asleep"),
    "host_memory_gib": (parse_secs, 0.0, "real host memory to allocate and touch"),
    "embedding_dim": (_count, 8, "length of embedding vectors"),
    "gpu": (_gpu_mode, "ledger", "GPU memory: 'ledger' (fake, booked) or 'torch' (real CUDA)"),
    "seed": (_opt_seed, None, "torch mode: weight pattern seed (default from the model name)"),
    "weights_dir": (_opt_path, None, "torch mode: where the weights file lives (default TMPDIR)"),
}


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``serve`` was asked to do."""

    model: str
    served_names: list[str]
    host: str = "127.0.0.1"
    port: int = 8000
    enable_sleep_mode: bool = False
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int = 4096
    max_num_seqs: int = 256
    access_log: bool = True
    model_gib: float = 1.0
    load_secs_per_gib: float = 0.02
    startup_secs: float | None = None
    sleep_secs: float | None = None
    wake_secs: float | None = None
    reload_secs: float | None = None
    tokens_per_sec: float = 200.0
    ttft_ms: float = 5.0
    residual_gib: float = 0.5
    host_memory_gib: float = 0.0
    embedding_dim: int = 8
    gpu: str = "ledger"
    seed: int | None = None
    weights_dir: str | None = None
    enable_lora: bool = False
    max_lora_rank: int = 16
    max_loras: int = 1
    faults: Faults = field(default_factory=Faults)
    unknown_args: list[str] = field(default_factory=list)
    non_default_args: dict[str, object] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        return self.served_names[0]

    @property
    def model_bytes(self) -> int:
        return int(self.model_gib * GIB)

    def _scaled(self, explicit: float | None) -> float:
        return self.model_gib * self.load_secs_per_gib if explicit is None else explicit

    @property
    def startup_delay(self) -> float:
        return self._scaled(self.startup_secs)

    @property
    def sleep_delay(self) -> float:
        return self._scaled(self.sleep_secs)

    @property
    def wake_delay(self) -> float:
        return self._scaled(self.wake_secs)

    @property
    def reload_delay(self) -> float:
        return self._scaled(self.reload_secs)


def _knob_arg(
    parser: argparse.ArgumentParser,
    name: str,
    kind: Callable[[object], object],
    default: object,
    help_text: str,
) -> None:
    env = ENV_PREFIX + name.upper()
    flag = "--mock-" + name.replace("_", "-")
    env_value = os.environ.get(env)
    # A string default goes through `type` like a command-line value, so env values are
    # parsed and validated exactly as flags are.
    start = env_value if env_value is not None else default
    if kind is parse_bool:
        parser.add_argument(
            flag,
            dest=name,
            type=parse_bool,
            nargs="?",
            const=True,
            default=start,
            help=f"{help_text} (env {env})",
        )
    else:
        parser.add_argument(
            flag, dest=name, type=kind, default=start, help=f"{help_text} (env {env})"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mock-vllm serve", description="A fake `vllm serve`.")
    parser.add_argument("model", nargs="?", help="model name or path")
    parser.add_argument("--model", dest="model_flag", help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", nargs="+", default=None)
    parser.add_argument("--enable-sleep-mode", action="store_true")
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--max-model-len", type=_count, default=4096)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--disable-uvicorn-access-log", action="store_true")
    parser.add_argument("--enable-lora", action="store_true")
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--max-loras", type=int, default=1)
    for name, (kind, default, help_text) in PROFILE_KNOBS.items():
        _knob_arg(parser, name, kind, default, help_text)
    for name, fault_kind in FAULT_PARSERS.items():
        _knob_arg(parser, name, fault_kind, getattr(Faults(), name), "fault knob")
    return parser


def _explicit(name: str, non_default: dict[str, object]) -> bool:
    return name in non_default or ENV_PREFIX + name.upper() in os.environ


def parse_serve_args(argv: Sequence[str]) -> ServeOptions:
    """Parse ``serve`` arguments (without the ``serve`` word); exits 2 on bad values."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(list(argv))
    model = args.model or args.model_flag
    if not model:
        parser.error("the following arguments are required: model")
    if args.tensor_parallel_size < 1:
        parser.error("--tensor-parallel-size must be >= 1")
    if not 0 < args.gpu_memory_utilization <= 1:
        parser.error("--gpu-memory-utilization must be in (0, 1]")
    faults = Faults()
    faults.merge({name: getattr(args, name) for name in FAULT_PARSERS})
    defaults = vars(build_parser().parse_args(["x"]))
    non_default = {
        k: v for k, v in vars(args).items() if k not in ("model", "model_flag") and v != defaults[k]
    }
    if args.gpu == "torch" and not _explicit("load_secs_per_gib", non_default):
        # Real copies take real time: the modelled latencies start at zero.
        args.load_secs_per_gib = 0.0
    return ServeOptions(
        model=model,
        served_names=list(args.served_model_name or [model]),
        host=args.host,
        port=args.port,
        enable_sleep_mode=args.enable_sleep_mode,
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        access_log=not args.disable_uvicorn_access_log,
        enable_lora=args.enable_lora,
        max_lora_rank=args.max_lora_rank,
        max_loras=args.max_loras,
        **{name: getattr(args, name) for name in PROFILE_KNOBS},
        faults=faults,
        unknown_args=unknown,
        non_default_args={"model_tag": model, **non_default},
    )
