"""A haproxy.cfg section as data: directives, each with the comment that says why.

Owns: `Section` (a header such as `frontend gpumux`, an introduction, and directives each
preceded by its comment) and rendering it with HAProxy's usual four-space indent, plus
quoting helpers for the two string forms the generated file uses.
Does not: know what any directive means (`haproxy`, `backends`). Pure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

INDENT = "    "


@dataclass
class Section:
    header: str
    intro: tuple[str, ...] = ()
    _lines: list[tuple[str, str]] = field(default_factory=list)

    def add(self, directive: str, why: str = "") -> None:
        """Append a directive; `why` (one or more lines) is written above it.

        Directives added without a `why` share the comment of the one before them."""
        self._lines.append((why, directive))

    def render(self) -> list[str]:
        out = [f"# {line}" if line else "#" for line in self.intro]
        out.append(self.header)
        for why, directive in self._lines:
            if why:
                out.extend(f"{INDENT}# {line}" for line in why.splitlines())
            out.append(INDENT + directive)
        return out


def single_quoted(text: str) -> str:
    """`text` as a single-quoted HAProxy argument: taken literally, so it may hold no `'`."""
    if "'" in text:
        raise ValueError(f"cannot single-quote {text!r}")
    return f"'{text}'"


def json_text(value: object) -> str:
    """Compact JSON for a single-quoted argument (`'` escaped as a JSON \\u0027)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).replace("'", "\\u0027")


def openai_error(message: str, error_type: str, code: str, param: str | None = None) -> str:
    """The OpenAI error envelope gpumux itself answers with, as JSON text."""
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return json_text(body)
