"""End to end: a shortened ``ctloop demo`` on the test Kafka (embedded Tansu by default) and chdb.

Real processes and connections throughout: the processor worker subprocess, trainers, the serving app,
the ClickHouse sink. Asserts the loop closed: triggers fired, the bad candidate was rejected and the
policy promoted a retrained model after the drift, and the figures come from the topics.
"""
from __future__ import annotations

import json

import pytest

from infra.demo.runner import DemoOptions, render_summary, run_demo


@pytest.mark.slow
@pytest.mark.timeout(330)
def test_quick_demo_closes_the_loop(settings, clickhouse_url, capsys):
    lines: list[str] = []
    options = DemoOptions.quick(drifts=1, timeout_s=200.0)
    result = run_demo(settings.replace(clickhouse_url=clickhouse_url), options, progress=lines.append)
    text = render_summary(result)
    s = result.summary
    # progress was shown phase by phase
    joined = "\n".join(lines)
    for phase in ("initial champion", "processors worker", "fault injection", "DRIFT 1", "streaming done"):
        assert phase in joined, f"no progress line about {phase!r}:\n{joined}"
    # the loop closed
    assert s["triggers"] >= 2, text
    assert set(s["triggers_by_reason"]) - {"manual"}, f"only manual triggers fired:\n{text}"
    assert s["training_runs"] >= 2, text
    assert s["candidates_rejected"] >= 1, text
    assert s["promotions"] >= 1, text
    assert result.loop_closed and result.ok, text
    assert len(s["champions"]) >= 2 and s["champions"][-1] != s["champions"][0]
    # counts from the topics match what the demo served
    assert s["predictions"] >= options.warmup_events + options.min_phase_events
    assert 0.35 < s["reviewed"] / s["predictions"] < 0.6
    # served accuracy dropped at the drift and recovered after the promotion
    acc = s["accuracy"]
    assert acc["before_drift"] > 0.85, text
    assert acc["after_drift"] < acc["before_drift"] - 0.15, text
    assert acc["after_recovery"] > acc["after_drift"] + 0.15, text
    # latencies measured
    assert s["latency"]["trigger_to_registered"] and s["latency"]["registered_to_promoted"], text
    # effectiveness: the managed model beats the frozen one after the drift
    cmp = result.comparison.as_dict()
    assert cmp["by_kind"]["ctloop"]["after_recovery"] > cmp["by_kind"]["never retrained"]["after_recovery"] + 0.15
    # report written from ClickHouse
    assert result.report_path is not None and result.report_path.exists()
    assert "<html" in result.report_path.read_text()[:2000].lower()
    json.dumps(result.as_dict(), default=str)
