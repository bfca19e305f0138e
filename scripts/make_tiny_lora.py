#!/usr/bin/env python3
"""Write a seeded LoRA adapter in PEFT's layout for a tiny model from `make_tiny_model.py`.

Used by the `real_vllm` tier to test adapters served through gpumux; nothing is
downloaded. What it writes into OUT (created if missing):
- `adapter_config.json`: PEFT's `LORA` config (`r`, `lora_alpha`, `target_modules`,
  `base_model_name_or_path`), the fields vLLM's `PEFTHelper` reads;
- `adapter_model.safetensors`: for every layer and target module,
  `base_model.model.model.layers.{i}.self_attn.{module}.lora_A.weight` (r x in) and
  `...lora_B.weight` (out x r), float32 drawn from N(0, `--std`) with `--seed`. B is not
  zero (PEFT initialises it to zero, which would make the adapter a no-op), so the
  adapter's greedy output differs from the base model's.

The shapes come from the model's own `config.json` (hidden size, heads, KV heads, head
dim, layers), so the adapter fits whatever `make_tiny_model.py` wrote.

Run with the Python of the vLLM environment (it needs `torch` and `safetensors`):
    python make_tiny_lora.py MODEL_DIR OUT [--rank 8] [--seed 0] [--targets q_proj,v_proj]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_TARGETS = ("q_proj", "v_proj")
DEFAULT_STD = 0.05


def projection_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(out, in) of each attention projection a LoRA may target, from a Llama config."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads", heads))
    head_dim = int(config.get("head_dim", hidden // heads))
    return {
        "q_proj": (heads * head_dim, hidden),
        "k_proj": (kv_heads * head_dim, hidden),
        "v_proj": (kv_heads * head_dim, hidden),
        "o_proj": (hidden, heads * head_dim),
    }


def adapter_config(model_dir: Path, rank: int, targets: list[str]) -> dict[str, Any]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(model_dir),
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": targets,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }


def write_adapter(
    model_dir: Path, out: Path, *, rank: int, seed: int, targets: list[str], std: float
) -> Path:
    # Imported here: only the vLLM environment has torch; `--help` works without it.
    import torch
    from safetensors.torch import save_file

    config = json.loads((model_dir / "config.json").read_text())
    shapes = projection_shapes(config)
    unknown = sorted(set(targets) - set(shapes))
    if unknown:
        raise SystemExit(f"unknown target modules {unknown}; known: {sorted(shapes)}")
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(int(config["num_hidden_layers"])):
        for module in targets:
            rows, cols = shapes[module]
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, cols, generator=generator) * std
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(rows, rank, generator=generator) * std
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    document = adapter_config(model_dir, rank, targets)
    (out / "adapter_config.json").write_text(json.dumps(document, indent=2) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    parser.add_argument("--std", type=float, default=DEFAULT_STD)
    args = parser.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    out = write_adapter(
        args.model_dir, args.out, rank=args.rank, seed=args.seed, targets=targets, std=args.std
    )
    sys.stdout.write(f"{out}\n")


if __name__ == "__main__":
    main()
