"""The benchmarks' shared helpers: percentile math, summaries, tables and result files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.common import (
    Summary,
    chat_body,
    completion_tokens,
    environment,
    environment_lines,
    fmt,
    markdown_table,
    mock_args,
    percentile,
    ratio,
    source_digest,
    summarize,
    summarize_ms,
    write_results,
)

pytestmark = pytest.mark.unit

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1, 2, 3, 4], 50, 2.5),
        ([1, 2, 3, 4], 0, 1),
        ([1, 2, 3, 4], 100, 4),
        ([4, 1, 3, 2], 25, 1.75),  # order of the input does not matter
        ([7.0], 99, 7.0),
        (list(range(1, 101)), 99, 99.01),
        ([0.0, 10.0], 99, 9.9),
    ],
)
def test_percentile_interpolates_linearly_between_closest_ranks(
    values: list[float], q: float, expected: float
) -> None:
    assert percentile(values, q) == pytest.approx(expected)


@given(st.lists(finite, min_size=1, max_size=50), st.floats(min_value=0, max_value=100))
def test_percentile_matches_numpys_default_method(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), abs=1e-6)


@given(st.lists(finite, min_size=1, max_size=50), st.floats(0, 100), st.floats(0, 100))
def test_percentile_is_monotone_and_bounded(values: list[float], q1: float, q2: float) -> None:
    low, high = sorted((q1, q2))
    assert min(values) <= percentile(values, low) <= percentile(values, high) <= max(values)


def test_percentile_rejects_no_values_nan_and_bad_ranks() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="NaN"):
        percentile([1.0, math.nan], 50)
    for q in (-1, 100.5):
        with pytest.raises(ValueError, match="within"):
            percentile([1.0], q)


def test_percentile_accepts_any_iterable() -> None:
    assert percentile(iter([3.0, 1.0, 2.0]), 50) == 2.0


def test_summarize_reports_count_percentiles_mean_and_extremes() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert (s.n, s.p50, s.mean, s.min, s.max) == (4, 2.5, 2.5, 1.0, 4.0)
    assert s.p99 == pytest.approx(3.97)
    with pytest.raises(ValueError, match="no values"):
        summarize([])


def test_summarize_ms_converts_seconds_to_milliseconds() -> None:
    s = summarize_ms([0.001, 0.002, 0.003])
    assert s.n == 3
    assert [s.p50, s.min, s.max, s.mean] == pytest.approx([2.0, 1.0, 3.0, 2.0])


def test_summary_as_dict_rounds_values() -> None:
    d = Summary(2, 1.23456, 2.0, 1.5, 1.0, 2.0).as_dict(digits=2)
    assert d == {"n": 2, "p50": 1.23, "p99": 2.0, "mean": 1.5, "min": 1.0, "max": 2.0}


def test_markdown_table_has_header_separator_and_escaped_cells() -> None:
    table = markdown_table(["mode", "p50 (ms)"], [["a|b", 1.5], ["gpumux", "2"]])
    assert table.splitlines() == [
        "| mode | p50 (ms) |",
        "|---|---|",
        "| a\\|b | 1.5 |",
        "| gpumux | 2 |",
    ]


def test_markdown_table_rejects_ragged_rows() -> None:
    with pytest.raises(ValueError, match="2 columns"):
        markdown_table(["a", "b"], [[1]])


def test_fmt_and_ratio_handle_missing_values() -> None:
    assert fmt(1.23456) == "1.23"
    assert fmt(2, 0) == "2"
    assert fmt(None) == "–"
    assert fmt(math.nan) == "–"
    assert ratio(1, 4) == 0.25
    assert math.isnan(ratio(1, 0))


def test_completion_tokens_reads_the_last_usage_in_a_body_tail() -> None:
    tail = (
        b'data: {"choices":[]}\n\n'
        b'data: {"usage":{"prompt_tokens":3,"completion_tokens": 16}}\n\ndata: [DONE]\n\n'
    )
    assert completion_tokens(tail) == 16
    assert completion_tokens(b'{"usage":{"completion_tokens":1}} {"completion_tokens":2}') == 2
    assert completion_tokens(b"data: [DONE]\n\n") == 0


def test_chat_body_asks_streams_for_usage() -> None:
    streamed = json.loads(chat_body("m", max_tokens=16, stream=True))
    assert streamed["stream_options"] == {"include_usage": True}
    assert streamed["max_tokens"] == 16
    whole = json.loads(chat_body("m", max_tokens=1, stream=False))
    assert "stream_options" not in whole
    assert whole["model"] == "m"


def test_mock_args_spell_mock_vllm_flags() -> None:
    assert mock_args(ttft_ms=0, tokens_per_sec=2000.0) == [
        "--mock-ttft-ms",
        "0",
        "--mock-tokens-per-sec",
        "2000.0",
    ]


def test_environment_names_cpus_python_and_commit() -> None:
    env = environment()
    assert env["cpus_usable"] >= 1
    assert env["python"].count(".") == 2
    assert env["git_commit"]
    assert len(env["source_digest"]) == 12
    lines = environment_lines(env)
    assert any("CPUs" in line for line in lines)
    assert any(env["source_digest"] in line for line in lines)


def test_source_digest_changes_with_any_source_file(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    before = source_digest(tmp_path, ["src"])
    assert source_digest(tmp_path, ["src"]) == before
    (tmp_path / "src" / "a.py").write_text("x = 2\n")
    assert source_digest(tmp_path, ["src"]) != before


def test_write_results_writes_strict_json_and_markdown(tmp_path: Path) -> None:
    json_path, md_path = write_results(
        "demo", {"value": math.nan, "rows": [1.0, math.inf]}, "| a |\n", directory=tmp_path
    )
    assert json.loads(json_path.read_text()) == {"value": None, "rows": [1.0, None]}
    assert md_path.read_text() == "| a |\n"
    assert (json_path.name, md_path.name) == ("demo.json", "demo.md")
