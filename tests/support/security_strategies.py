"""Hypothesis strategies for JSON request bodies of any depth, built as bytes.

Owns: `documents` — `{"model", "stream", "x": spine}` where the spine nests to any
depth, each level an array or an object, with shallow siblings at random levels — and the
depth the generator gave it, so tests need no recursive reference parser (Python's own
`json` fails near 1,000 levels); `shallow` JSON values for siblings and leaves.
Does not: send anything or assert (the tests in tests/unit and tests/security do).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from gpumux.http.body import MAX_DEPTH

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    # Strings that look like structure: brackets, quotes and backslashes inside them.
    | st.text(alphabet='[]{}"\\,:', max_size=30)
)
shallow = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@dataclass(frozen=True)
class Doc:
    """A JSON object as bytes, with the depth the generator gave it (the object is 1)."""

    data: bytes
    depth: int


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


@st.composite
def documents(draw: st.DrawFn, model: st.SearchStrategy[Any] | None = None) -> Doc:
    """`{"model": …, siblings…, "x": spine}` where the spine nests to any depth (0–1500),
    each level an array or an object, with shallow siblings at random levels."""
    spine = draw(st.integers(0, 1500) | st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3))
    # One drawn seed picks each level's kind: drawing thousands of booleans is slow.
    kinds = random.Random(draw(st.integers(0, 2**32))).choices((True, False), k=spine)
    sibling_at = draw(st.dictionaries(st.integers(0, max(spine - 1, 0)), shallow, max_size=4))
    leaf = draw(shallow)
    openers, closers = [], []
    deepest = spine + _depth(leaf)
    for level, is_array in enumerate(kinds):
        sibling = sibling_at.get(level)
        extra = b""
        if sibling is not None:
            extra = json.dumps(sibling).encode()
            deepest = max(deepest, level + 1 + _depth(sibling))
        if is_array:
            openers.append(b"[" + (extra + b"," if extra else b""))
            closers.append(b"]")
        else:
            openers.append(b"{" + (b'"s": ' + extra + b"," if extra else b"") + b'"k": ')
            closers.append(b"}")
    spine_bytes = b"".join(openers) + json.dumps(leaf).encode() + b"".join(reversed(closers))
    chosen = draw(model) if model is not None else "a"
    asked = {"model": chosen, "stream": draw(st.booleans()), "max_tokens": 2}
    asked["messages"] = [{"role": "user", "content": "hi"}]  # what a backend needs
    head = json.dumps(asked)[:-1].encode()
    # The head's `messages` (a list of objects) is two levels below the top.
    return Doc(head + b', "x": ' + spine_bytes + b"}", 1 + max(deepest, 2))
