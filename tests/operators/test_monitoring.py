"""The alert rules and the Grafana dashboard in docs/monitoring: they parse, and every series they read is one
the real services expose (no promtool here: expressions are parsed by promql-parser, Prometheus' grammar)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from tests.operators.conftest import Ops
from tests.support.metrics import samples

MONITORING = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
ADDED_BY_PROMETHEUS = {"up"}  # series Prometheus makes itself for every target
TARGET_LABELS = {"job", "instance"}  # labels Prometheus attaches to every scraped series
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            exprs.append(expr)
    return exprs


def selectors(node: Any) -> Iterator[Any]:
    """Every vector selector in a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node
        return
    for attribute in ("lhs", "rhs", "expr", "args", "vector_selector", "param"):
        child = getattr(node, attribute, None)
        if child is None:
            continue
        for item in child if isinstance(child, list) else [child]:
            yield from selectors(item)


Exposed = tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], set[str]]


def declared_names(text: str) -> set[str]:
    """Series names a /metrics text declares (# TYPE), also those with no sample yet (a counter never bumped)."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names.update((f"{name}_bucket", f"{name}_count", f"{name}_sum") if kind == "histogram" else (name,))
    return names


def check_series(expr: str, exposed: Exposed) -> list[str]:
    """What in `expr` the services do not expose: unknown metric names, label values that match no series."""
    found, declared = exposed
    problems = []
    for selector in selectors(promql_parser.parse(expr)):
        name = selector.name
        if name in ADDED_BY_PROMETHEUS:
            continue
        if name not in declared:
            problems.append(f"{name}: not in /metrics")
            continue
        series = [dict(labels) for sample, labels in found if sample == name]
        if not series:
            continue  # declared, no series yet (labels appear with their first event): nothing to compare
        for matcher in selector.matchers.matchers:
            if matcher.name in TARGET_LABELS:
                continue
            op = str(matcher.op)  # MatchOp.Equal, MatchOp.Re, MatchOp.NotEqual, MatchOp.NotRe
            values = {s.get(matcher.name, "") for s in series}
            if op == "MatchOp.Equal":
                ok = matcher.value in values
            elif op == "MatchOp.Re":  # each alternative of a|b|c must name a series (catches a typo in one)
                words = re.fullmatch(r"[\w|]+", matcher.value)
                alternatives = matcher.value.split("|") if words else [matcher.value]
                ok = all(any(re.fullmatch(alt, value) for value in values) for alt in alternatives)
            else:
                ok = True
            if not ok:
                problems.append(f"{name}{{{matcher.name} {op} {matcher.value!r}}}: no such series")
    return problems


@pytest.fixture(scope="module")
def exposed(ops: Ops) -> Exposed:
    scheduler, sandbox = ops.scheduler_metrics(), ops.sandbox_metrics()
    assert scheduler.status_code == sandbox.status_code == 200
    texts = scheduler.text + sandbox.text
    return {**samples(scheduler.text), **samples(sandbox.text)}, declared_names(texts)


def test_alert_rules_are_complete_and_named_once() -> None:
    found = rules()
    names = [rule["alert"] for rule in found]
    assert len(names) == len(set(names))
    for rule in found:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        promql_parser.parse(rule["expr"])
    # the failures the operators' issue names, each with its own rule
    required = {"SeaTableScriptQueueGrowing", "SeaTableSandboxNodeUnhealthy", "SeaTableSandboxNodeDown",
                "SeaTableResultsNotDelivered", "SeaTableRunsSandboxLost"}
    assert required <= set(names)


def test_alert_rules_read_only_series_the_services_expose(exposed: Exposed) -> None:
    # the check itself catches a misspelt name, label value or alternative
    assert check_series("seatable_scheduler_queued_runz > 0", exposed)
    assert check_series('increase(seatable_scheduler_runs_finished_total{outcome="sandbox_lots"}[5m])', exposed)
    assert check_series('seatable_scheduler_handoff_errors_total{cause=~"busy|refsued"}', exposed)
    problems = {rule["alert"]: check_series(rule["expr"], exposed) for rule in rules()}
    assert {alert: p for alert, p in problems.items() if p} == {}


def test_dashboard_reads_only_series_the_services_expose(exposed: Exposed) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    problems = {expr: check_series(expr, exposed) for expr in exprs}
    assert {expr: p for expr, p in problems.items() if p} == {}


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"


def test_scrape_config_matches_the_rules() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    used = set(re.findall(r'job="([^"]+)"', (MONITORING / "alerts.yml").read_text()))
    assert used <= jobs == {"seatable-scheduler", "seatable-sandbox"}
    assert all("credentials_file" in job["authorization"] for job in config["scrape_configs"])
