"""Deterministic "model output": the same model and prompt always give the same text.

Owns: the fake tokenizer (whitespace words), the generated words, the garbage a model
emits with discarded weights, and embedding vectors. Pure functions.
"""

from __future__ import annotations

import hashlib
import math

VOCAB = (
    "the", "a", "model", "answer", "is", "of", "GPU", "memory", "token", "switch",
    "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "then", "sleeps",
    "wakes", "again", "with", "weights", "cache", "prompt", "reply", "here", "more", "data",
    "light", "fast", "slow", "kernel", "tensor", "batch", "queue", "ready", "done", "hello",
    "world", "vLLM", "serves", "many", "models", "on", "few", "cards",
)  # fmt: skip
# What a model with discarded (level-2, not reloaded) weights produces: valid HTTP 200,
# meaningless text, as real vLLM does.
GARBAGE_TOKEN = "!"
VOCAB_SIZE = 32_000


def _digest(*parts: str | int) -> bytes:
    return hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest()


def count_tokens(text: str) -> int:
    """Prompt length in fake tokens (whitespace words, at least one)."""
    return max(1, len(text.split()))


def token(model: str, prompt: str, index: int) -> str:
    """The ``index``-th generated token; words after the first carry a leading space."""
    word = VOCAB[int.from_bytes(_digest(model, prompt, index)[:4], "big") % len(VOCAB)]
    return word if index == 0 else " " + word


def tokenize(text: str) -> list[int]:
    return [int.from_bytes(_digest(w)[:4], "big") % VOCAB_SIZE for w in text.split()]


def detokenize(ids: list[int]) -> str:
    return " ".join(VOCAB[i % len(VOCAB)] for i in ids)


def embedding(model: str, text: str, dim: int) -> list[float]:
    """A unit-length vector derived from the model and text."""
    raw = [
        int.from_bytes(_digest(model, text, i)[:4], "big") / 0xFFFFFFFF * 2 - 1 for i in range(dim)
    ]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]
