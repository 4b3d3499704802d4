"""Grafana shows 0, not "No data" (issue 13, item 6): counters export 0 for their known label sets
before their first event (infra/metrics.py), and every dashboard query that sums or adds counters falls
back to 0 (``or vector(0)``) where no series exists yet."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from infra.metrics import KNOWN_LABEL_VALUES, Metrics
from tests.helpers.processes import running_processors, wait_for

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "infra/grafana/dashboards/ctloop.json"


def _exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def _counter_aggregations(expr: str) -> int:
    """How many sum(...) aggregations over counters (ctloop_*_total) the expression has."""
    if "histogram_quantile" in expr or not re.search(r"ctloop_[a-z0-9_]+_total", expr):
        return 0
    return len(re.findall(r"\bsum\s*(?:by\s*\([^)]*\)\s*)?\(", expr))


def test_every_sum_of_counters_falls_back_to_zero():
    checked = 0
    for title, expr in _exprs():
        sums = _counter_aggregations(expr)
        if not sums:
            continue
        checked += 1
        assert expr.count("or vector(0)") >= sums, f"{title}: each summed counter needs `or vector(0)`: {expr}"
        if " + " in expr:  # a + b: each side protected on its own, else a missing side empties the sum
            for side in expr.split(" + "):
                assert re.fullmatch(r"\(.*or vector\(0\)\)", side.strip()), f"{title}: unprotected term {side!r}"
    assert checked >= 15, "the dashboard's counter panels were not found"


def test_the_dashboard_queries_are_valid_promql(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (.ci/run installs Debian's prometheus)")
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr.replace("$deployment", ".*")}
        for i, (_, expr) in enumerate(_exprs())]}]}
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"promtool check rules:\n{proc.stdout}{proc.stderr}"


def _samples(text: str, name: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, flags=re.M)}


def test_known_label_sets_export_zero_before_the_first_event():
    m = Metrics("test")
    drift = m.counter("ctloop_drift_windows_total", "d", ("deployment", "detected"))
    runs = m.counter("ctloop_trainer_runs_total", "r", ("deployment", "outcome"))
    duplicates = m.counter("ctloop_feedback_duplicates_total", "d", ("deployment",))
    roles = m.counter("ctloop_test_role_total", "r", ("role",))
    tables = m.counter("ctloop_sink_insert_failures_total", "f", ("table",))
    text = m.exposition()
    assert _samples(text, "ctloop_test_role_total") == {f'{{role="{r}"}}': 0.0 for r in KNOWN_LABEL_VALUES["role"]}
    assert not _samples(text, "ctloop_trainer_runs_total"), "no deployment is known yet"
    # a first event for deployment "shop" anywhere: every deployment counter exports 0 for it
    drift.labels("shop", "true").inc()
    text = m.exposition()
    assert _samples(text, "ctloop_drift_windows_total") == {'{deployment="shop",detected="false"}': 0.0,
                                                           '{deployment="shop",detected="true"}': 1.0}
    assert _samples(text, "ctloop_trainer_runs_total") == {
        f'{{deployment="shop",outcome="{o}"}}': 0.0 for o in KNOWN_LABEL_VALUES["outcome"]}
    assert _samples(text, "ctloop_feedback_duplicates_total") == {'{deployment="shop"}': 0.0}
    runs.labels(deployment="shop", outcome="registered").inc()
    duplicates.labels("shop").inc(2)
    assert _samples(m.exposition(), "ctloop_feedback_duplicates_total") == {'{deployment="shop"}': 2.0}
    m.declare("table", ["predictions", "feedback"])
    assert set(_samples(m.exposition(), "ctloop_sink_insert_failures_total").values()) == {0.0}
    assert len(_samples(m.exposition(), "ctloop_sink_insert_failures_total")) == 2
    tables.labels("predictions").inc()


def test_a_fresh_processor_worker_exports_its_feedback_counters_at_zero(settings, topics):
    """Over the embedded broker: once the worker saw deployment "shop" (one joined prediction), its
    duplicate, correction and ignored counters export 0 for it, not nothing."""
    from streams.sdk import CtloopClient

    with running_processors(settings, stages=["processors.feedback_join"], timeout_s=90) as proc:
        port = proc.ready["metrics_port"]
        scrape = lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()  # noqa: E731
        assert not _samples(scrape(), "ctloop_feedback_duplicates_total"), "no deployment seen yet"
        with CtloopClient(settings) as client:
            pid = client.log_prediction("shop", {"x0": 1.0}, label="1", model_version="v1")
            client.log_feedback(pid, "shop", label="1")
        def shop_seen():
            text = scrape()
            return text if 'deployment="shop"' in text else None

        text = wait_for(shop_seen, 60, "the worker's counters for deployment shop")
        for name in ("ctloop_feedback_duplicates_total", "ctloop_feedback_corrections_total",
                     "ctloop_feedback_ignored_total"):
            assert _samples(text, name).get('{deployment="shop"}') == 0.0, f"{name} does not export 0 for shop"
