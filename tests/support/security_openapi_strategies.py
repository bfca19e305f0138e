"""Hypothesis strategies read off an OpenAPI 3.1 document: schemathesis's core idea, for
the subset of JSON Schema the admin API's document uses.

Owns: `from_schema` (a strategy for values that satisfy a schema: `type` one or several,
`enum`, `properties` with `required`, `additionalProperties`, `items`, `exclusiveMinimum`,
`minimum`, local `$ref`s), with `hints` that bias named properties toward values the
server knows (a configured model); and `path_values` for the odd path segments every
`{parameter}` is also tried with.
Does not: send requests or decide what a response must be (the admin fuzz test does).
Why not schemathesis: it would add a large dependency tree to CI for a document of ten
operations; this covers what that document says, and fails loudly on a keyword it does
not know (so a richer document is not fuzzed silently wrong).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from tests.support.security_strategies import shallow

_KNOWN = {
    "type",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "exclusiveMinimum",
    "minimum",
    "description",
    "$ref",
}
#: Path segments that have broken routers: dot segments, encoded slashes and NULs,
#: invalid or overlong percent-encodings, bidi controls, very long names.
ODD_SEGMENTS = [
    "..",
    "%2e%2e",
    "%2E%2e%2f",
    "a%2f..%2fb",
    "%252e%252e",
    "%00",
    "a%00b",
    "%ff",
    "%c0%af",
    "%",
    "%zz",
    "%e2%80%ae",
    "%F0%9F%92%A9",
    "a;b=c",
    "~",
    " ",
    "x" * 300,
    "\u00fc",
]


def from_schema(
    schema: dict[str, Any], document: dict[str, Any], hints: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[Any]:
    unknown = set(schema) - _KNOWN
    assert not unknown, f"the admin fuzz does not know the JSON Schema keywords {unknown}"
    if "$ref" in schema:
        return from_schema(_resolve(schema["$ref"], document), document, hints)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kinds = schema.get("type", ["null", "boolean", "number", "string", "array", "object"])
    if isinstance(kinds, str):
        kinds = [kinds]
    return st.one_of([_of_type(kind, schema, document, hints) for kind in kinds])


def _of_type(
    kind: str,
    schema: dict[str, Any],
    document: dict[str, Any],
    hints: dict[str, st.SearchStrategy[Any]],
) -> st.SearchStrategy[Any]:
    if kind == "object":
        return _object(schema, document, hints)
    if kind == "array":
        items = from_schema(schema.get("items", {}), document, hints)
        return st.lists(items, max_size=4)
    if kind in ("number", "integer"):
        low = schema.get("exclusiveMinimum", schema.get("minimum"))
        numbers = st.integers() if kind == "integer" else st.floats(allow_nan=False)
        if low is None:
            return numbers
        strict = "exclusiveMinimum" in schema
        return st.floats(min_value=low, max_value=1e6, exclude_min=strict, allow_nan=False)
    simple = {"string": st.text(max_size=30), "boolean": st.booleans(), "null": st.none()}
    return simple[kind]


def _object(
    schema: dict[str, Any], document: dict[str, Any], hints: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    properties: dict[str, Any] = schema.get("properties", {})
    if not properties:
        return st.dictionaries(st.text(max_size=10), shallow, max_size=5)
    required = set(schema.get("required", []))

    def value(name: str, sub: dict[str, Any]) -> st.SearchStrategy[Any]:
        own = from_schema(sub, document, hints)
        return hints[name] | own if name in hints else own

    must = st.fixed_dictionaries({n: value(n, s) for n, s in properties.items() if n in required})
    may = st.fixed_dictionaries(
        {}, optional={n: value(n, s) for n, s in properties.items() if n not in required}
    )
    return st.tuples(must, may).map(lambda pair: {**pair[1], **pair[0]})


def _resolve(reference: str, document: dict[str, Any]) -> dict[str, Any]:
    assert reference.startswith("#/"), reference
    node: Any = document
    for part in reference[2:].split("/"):
        node = node[part]
    resolved: dict[str, Any] = node
    return resolved
