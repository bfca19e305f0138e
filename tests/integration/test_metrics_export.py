"""Metrics as Prometheus sees them: /metrics, /metrics/backends, promtool, the Grafana JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.client import chat_body, post
from tests.support.daemon import mock_model, running_daemon
from tests.support.metrics import promtool_lint, scrape

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana" / "gpumux.json"
#: PromQL words that look like metric names but are not.
PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset", "inf", "nan"}
)


def exposed_names(text: str) -> set[str]:
    """Every series name a scrape declares or carries (histogram/counter suffixes included)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter" and not name.endswith("_total"):
                names.add(f"{name}_total")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def metric_names_in(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (labels, functions, ranges removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables
    found = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        name = match.group(0)
        after = expr[match.end() :].lstrip()
        if after.startswith("(") or name.lower() in PROMQL_WORDS:
            continue  # a function or keyword
        found.add(name)
    return found


def grafana_exprs() -> list[str]:
    dashboard = json.loads(GRAFANA.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        exprs += [t["expr"] for t in panel.get("targets", [])]
    variables = dashboard["templating"]["list"]
    exprs += [
        v["definition"].removeprefix("label_values(").split(",")[0]
        for v in variables
        if v["type"] == "query"
    ]
    return exprs


def test_metric_name_extraction() -> None:
    """The PromQL scanner finds metric names and skips functions, labels and keywords."""
    expr = (
        'histogram_quantile(0.95, sum by (le, model) (rate(vllm:ttft_bucket{model=~"$model"}'
        "[$__rate_interval]))) / on (model) gpumux_x_total"
    )
    assert metric_names_in(expr) == {"vllm:ttft_bucket", "gpumux_x_total"}


def test_metrics_backends_promtool_and_grafana_against_a_live_daemon(tmp_path: Path) -> None:
    """Live scrapes: backends re-exported with `model`; lint clean; Grafana's names exist."""
    models = {"a": mock_model(), "b": mock_model()}
    with running_daemon(tmp_path, models) as daemon:
        for model in ("a", "b", "a"):  # two switches, so switch histograms have series
            assert post(daemon, "/v1/chat/completions", chat_body(model)).status == 200
        own = scrape(daemon, "/metrics")
        backends = scrape(daemon, "/metrics/backends")

    assert 'vllm:num_requests_running{engine="0",model="a",model_name="a"}' in backends
    assert 'gpumux_backend_scrape_success{model="a"} 1.0' in backends
    assert 'gpumux_backend_scrape_success{model="b"} 1.0' in backends  # asleep, still alive

    code, output = promtool_lint(own)
    assert (code, output) == (0, "")
    code, output = promtool_lint(backends)
    complaints = [line for line in output.splitlines() if line.strip()]
    assert complaints
    assert all("should not contain ':'" in line for line in complaints), output
    assert all(line.startswith("vllm:") for line in complaints), output

    available = exposed_names(own) | exposed_names(backends)
    missing = {
        name: expr
        for expr in grafana_exprs()
        for name in metric_names_in(expr)
        if name not in available
    }
    assert not missing, f"Grafana references metrics no scrape has: {missing}"


def test_grafana_dashboard_is_templated() -> None:
    """The dashboard imports anywhere: a datasource input/variable and a `model` variable."""
    dashboard = json.loads(GRAFANA.read_text())
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "model"} <= variables
    assert len([p for p in dashboard["panels"] if p["type"] != "row"]) >= 20
