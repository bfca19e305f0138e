#!/usr/bin/env python3
"""Write a tiny random-weight Llama model directory that `vllm serve` can load offline.

Used by `scripts/setup-real-vllm.sh` for the `real_vllm` test tier; nothing is
downloaded. The weights are random (seeded), so greedy output is gibberish but
deterministic. The tests mostly serve with `--load-format dummy` (vLLM fills the weights
with its own seeded values and never reads the file); `model.safetensors` is there for
what dummy weights cannot do, such as `collective_rpc reload_weights` after a level-2
sleep, which vLLM refuses for the dummy format.

What it writes into OUT (created if missing):
- `tokenizer.json`: a byte-level BPE trained here, in a few seconds, on a corpus built
  from this interpreter's own standard-library sources (sorted, so the result repeats);
- `tokenizer_config.json`, `special_tokens_map.json`: a `PreTrainedTokenizerFast` with
  `<s>`/`</s>`/`<pad>` and a small chat template of our own;
- `config.json`, `generation_config.json`: `LlamaForCausalLM` with 128 hidden units,
  `--layers` layers, 4 attention heads, 2 KV heads, 512 positions, and a vocabulary
  exactly as large as the tokenizer's;
- `model.safetensors`: float32 weights drawn from N(0, 0.02) with `--seed` (~4 MB).

Run with the Python of the vLLM environment (it needs the `tokenizers` package):
    python make_tiny_model.py OUT [--layers N] [--vocab-size N] [--seed N]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_TOKENS)

#: Our chat template: one `<|role|>` line per message, closed by `<|end|>`.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

MAX_POSITIONS = 512
HIDDEN = 128
INTERMEDIATE = 256
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 32
INIT_STD = 0.02
CORPUS_FILES = 80
CORPUS_FILE_MAX_BYTES = 200_000


def corpus() -> Iterator[str]:
    """Text to train the tokenizer on: the first standard-library modules, by name."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())[:CORPUS_FILES]
    if not files:
        raise SystemExit(f"make_tiny_model: no .py files under {stdlib} to train a tokenizer on")
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")[:CORPUS_FILE_MAX_BYTES]
        yield from text.splitlines(keepends=True)


def train_tokenizer(vocab_size: int) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` that prepends `<s>` to every sequence."""
    # Imported by name: `tokenizers` lives in the vLLM environment, not in gpumux's.
    tk = importlib.import_module("tokenizers")
    models, pre_tokenizers, decoders = tk.models, tk.pre_tokenizers, tk.decoders
    trainers, processors = tk.trainers, tk.processors

    tokenizer = tk.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def model_config(layers: int, vocab_size: int, ids: dict[str, int]) -> dict[str, object]:
    """A Llama `config.json` small enough to start in seconds on one CPU core."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": INIT_STD,
        "vocab_size": vocab_size,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[PAD],
        "dtype": "float32",
        "use_cache": True,
    }


def weight_shapes(layers: int, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of `LlamaForCausalLM` by its checkpoint name, with its shape."""
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab_size, HIDDEN),
        "model.norm.weight": (HIDDEN,),
        "lm_head.weight": (vocab_size, HIDDEN),
    }
    for i in range(layers):
        layer = f"model.layers.{i}"
        shapes |= {
            f"{layer}.input_layernorm.weight": (HIDDEN,),
            f"{layer}.post_attention_layernorm.weight": (HIDDEN,),
            f"{layer}.self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN),
            f"{layer}.self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            f"{layer}.self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            f"{layer}.self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
            f"{layer}.mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN),
            f"{layer}.mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
            f"{layer}.mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
        }
    return shapes


def write_weights(path: Path, layers: int, vocab_size: int, seed: int) -> None:
    """Seeded random float32 weights (norms at 1.0) in one safetensors file."""
    np = importlib.import_module("numpy")
    save_file = importlib.import_module("safetensors.numpy").save_file
    rng = np.random.default_rng(seed)
    tensors = {
        name: (
            np.ones(shape, dtype=np.float32)
            if name.endswith("norm.weight")
            else rng.normal(0.0, INIT_STD, size=shape).astype(np.float32)
        )
        for name, shape in weight_shapes(layers, vocab_size).items()
    }
    save_file(tensors, str(path), metadata={"format": "pt"})
    path.chmod(0o644)


def write_model(out: Path, layers: int, vocab_size: int, seed: int) -> None:
    """Train the tokenizer and write every file of the model directory into `out`."""
    tokenizer = train_tokenizer(vocab_size)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    ids: dict[str, int] = {tok: tokenizer.token_to_id(tok) for tok in SPECIAL_TOKENS}
    actual_vocab: int = tokenizer.get_vocab_size()
    special_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    files: dict[str, object] = {
        "tokenizer_config.json": {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special_map,
            "additional_special_tokens": list(ROLE_TOKENS),
            "add_bos_token": False,  # the post-processor adds it
            "clean_up_tokenization_spaces": False,
            "model_max_length": MAX_POSITIONS,
            "chat_template": CHAT_TEMPLATE,
        },
        "special_tokens_map.json": {
            **special_map,
            "additional_special_tokens": list(ROLE_TOKENS),
        },
        "config.json": model_config(layers, actual_vocab, ids),
        "generation_config.json": {
            "bos_token_id": ids[BOS],
            "eos_token_id": ids[EOS],
            "pad_token_id": ids[PAD],
        },
    }
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    write_weights(out / "model.safetensors", layers, actual_vocab, seed)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and write the model directory."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=Path, help="model directory to write")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    parser.add_argument("--vocab-size", type=int, default=2048, help="BPE target (default 2048)")
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    args = parser.parse_args(argv)
    if args.layers < 1 or args.vocab_size < 300:
        parser.error("--layers must be >= 1 and --vocab-size >= 300")
    write_model(args.out, args.layers, args.vocab_size, args.seed)
    sys.stderr.write(f"make_tiny_model: wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
