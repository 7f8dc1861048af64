"""The Grafana dashboard deploy/grafana/pgsluice.json (issue 16, DESIGN §6): valid JSON with unique
panel ids and a sane layout, and its queries use exactly the metric families and labels pgsluice
exposes (docs/operations.md), each one at least once. Needs neither pgsluice nor Postgres."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

import pgharness
from conftest import POOL_MODE, TARGET

if TARGET == "direct" or POOL_MODE != "transaction":
    pytest.skip("static check of a file; runs in the pgsluice transaction-mode pass", allow_module_level=True)

DASHBOARD = pgharness.REPO_ROOT / "deploy" / "grafana" / "pgsluice.json"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

# Every family pgsluice exposes, with its labels (docs/operations.md, "Observability").
FAMILIES = {
    "pgsluice_build_info": {"version"},
    "pgsluice_client_connections": {"state"},
    "pgsluice_server_connections": {"service", "backend", "state"},
    "pgsluice_pool_max_connections": {"service", "backend"},
    "pgsluice_waiting_clients": {"service", "backend"},
    "pgsluice_pool_paused": {"service", "backend"},
    "pgsluice_acquire_timeouts_total": {"service", "backend"},
    "pgsluice_fast_fails_total": {"service", "backend", "reason"},
    "pgsluice_transactions_total": {"service", "backend"},
    "pgsluice_queries_total": {"service", "backend"},
    "pgsluice_server_connects_total": {"service", "backend", "result"},
    "pgsluice_server_health_check_failures_total": {"service", "backend"},
    "pgsluice_server_connections_closed_total": {"service", "backend", "reason"},
    "pgsluice_acquire_duration_seconds": {"service", "backend"},
    "pgsluice_query_duration_seconds": {"service", "backend"},
    "pgsluice_breaker_state": {"backend", "state"},
    "pgsluice_breaker_trips_total": {"backend"},
    "pgsluice_breaker_probes_total": {"backend"},
    "pgsluice_config_reloads_total": {"result"},
    "pgsluice_coalesce_requests_total": {"service", "backend"},
    "pgsluice_coalesce_executions_total": {"service", "backend"},
    "pgsluice_coalesce_shared_total": {"service", "backend"},
    "pgsluice_coalesce_batches_total": {"service", "backend"},
    "pgsluice_coalesce_fallbacks_total": {"service", "backend"},
    "pgsluice_coalesce_ineligible_total": {"service", "backend", "reason"},
    "pgsluice_coalesce_request_outcomes_total": {"service", "backend", "outcome"},
    "pgsluice_coalesce_batch_size": {"service", "backend"},
    "pgsluice_n_plus_one_total": {"service", "backend"},
}
HISTOGRAMS = {"pgsluice_acquire_duration_seconds", "pgsluice_query_duration_seconds", "pgsluice_coalesce_batch_size"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Grafana's variables, replaced by something PromQL accepts.
SUBSTITUTIONS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$service": ".*",
    "$backend": ".*",
}

SELECTOR = re.compile(r"\b(pgsluice_[a-z0-9_]+)\b(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


@pytest.fixture(scope="module")
def dashboard() -> dict:
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def all_panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels (collapsed rows) included."""
    found = []

    def walk(panels):
        for panel in panels:
            found.append(panel)
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return found


def all_exprs(dashboard: dict) -> list[str]:
    return [target["expr"] for panel in all_panels(dashboard) for target in panel.get("targets", [])
            if "expr" in target]


def family(name: str) -> str:
    """The family a series name belongs to: a histogram's _bucket/_sum/_count series are its own."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return name


def substitute(expr: str) -> str:
    for variable, value in sorted(SUBSTITUTIONS.items(), key=lambda item: -len(item[0])):
        expr = expr.replace("${" + variable[1:] + "}", value).replace(variable, value)
    return expr


def test_identity(dashboard):
    assert dashboard["uid"] == "pgsluice"
    assert dashboard["title"] == "pgsluice"
    assert set(dashboard["tags"]) >= {"pgsluice", "postgres"}
    assert dashboard["refresh"] == "30s"
    assert dashboard["time"] == {"from": "now-1h", "to": "now"}
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36


def test_datasource_and_variables(dashboard):
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name, query in (("service", "label_values(pgsluice_pool_max_connections, service)"),
                        ("backend", "label_values(pgsluice_breaker_state, backend)")):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["multi"] and variable["includeAll"], name
        assert query in (variable["definition"], variable["query"]["query"]), variable
    # Every query goes to the data source picked in the variable.
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        for item in [panel, *panel.get("targets", [])]:
            assert item["datasource"]["uid"] == "${datasource}", (panel["title"], item)


def test_panel_ids_unique(dashboard):
    ids = [panel["id"] for panel in all_panels(dashboard)]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"duplicate panel ids: {duplicates}"


def test_layout(dashboard):
    """Panels fit the 24-column grid and do not overlap."""
    taken = {}
    for panel in all_panels(dashboard):
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def test_rows(dashboard):
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert rows == ["Overview", "Clients and pool", "Latency", "Work", "Failures", "Breaker and config", "Coalescer"]


def test_metric_names_exist(dashboard):
    exprs = all_exprs(dashboard)
    assert exprs
    unknown = {name for expr in exprs for name, _ in SELECTOR.findall(expr) if family(name) not in FAMILIES}
    assert not unknown, f"metrics pgsluice does not expose: {sorted(unknown)}"


def test_every_family_shown(dashboard):
    used = {family(name) for expr in all_exprs(dashboard) for name, _ in SELECTOR.findall(expr)}
    missing = set(FAMILIES) - used
    assert not missing, f"families no panel shows: {sorted(missing)}"


def test_selectors(dashboard):
    """Label matchers name only labels the family has, and the service/backend variables filter
    every family that has those labels."""
    for expr in all_exprs(dashboard):
        for name, braces in SELECTOR.findall(expr):
            labels = FAMILIES.get(family(name), set()) | ({"le"} if name.endswith("_bucket") else set())
            matchers = {label: (op, value) for label, op, value in MATCHER.findall(braces)}
            invented = set(matchers) - labels
            assert not invented, f"{name} has no label {sorted(invented)}: {expr}"
            for label in ("service", "backend"):
                if label in labels:
                    assert matchers.get(label) == ("=~", f"${label}"), f"{name} not filtered by ${label}: {expr}"


def test_counters_and_histograms_used_properly(dashboard):
    for expr in all_exprs(dashboard):
        for match in SELECTOR.finditer(expr):
            name = match.group(1)
            if name.endswith("_total") or name.endswith("_bucket"):
                before = expr[: match.start()]
                assert re.search(r"\b(rate|increase)\($", before), f"counter {name} not under rate()/increase(): {expr}"
            assert name not in HISTOGRAMS, f"histogram {name} used without _bucket/_sum/_count: {expr}"
            if name.endswith("_bucket"):
                assert "histogram_quantile(" in expr and "by (le" in expr, expr


def balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = []
    quote = None
    escaped = False
    for ch in expr:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack and quote is None


def test_expr_syntax(dashboard):
    for expr in all_exprs(dashboard):
        concrete = substitute(expr)
        assert "$" not in concrete, f"unknown variable left in: {expr}"
        assert balanced(concrete), f"unbalanced brackets or quotes: {expr}"


def test_expr_syntax_promtool(dashboard, tmp_path):
    """promtool parses each query (as a recording rule: no Prometheus server needed)."""
    if not os.path.exists(PROMTOOL):
        pytest.skip("promtool not installed")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"pgsluice_dashboard:expr_{i}", "expr": substitute(expr)}
        for i, expr in enumerate(all_exprs(dashboard))]}]}
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(json.dumps(rules, indent=2))  # JSON is YAML
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
