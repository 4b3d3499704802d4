"""End to end: a shortened ``ctloop demo`` on the test Kafka (embedded Tansu by default) and chdb.

Real processes and connections throughout: the processor worker subprocess, trainers, the serving app,
the ClickHouse sink. Asserts the loop closed: triggers fired, the bad candidate was rejected and the
policy promoted a retrained model after the drift (fixed in events), and the figures come from the topics.
"""
from __future__ import annotations

import json

import pytest

from infra.demo.effectiveness import ARF, CTLOOP, HAT, NEVER, SLIDING
from infra.demo.runner import DemoOptions, render_summary, run_demo


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_quick_demo_closes_the_loop(settings, clickhouse_url, capsys):
    lines: list[str] = []
    options = DemoOptions.quick(drifts=1, timeout_s=300.0)  # streaming: 6,000 events at 75/s
    result = run_demo(settings.replace(clickhouse_url=clickhouse_url), options, progress=lines.append)
    text = render_summary(result)
    s = result.summary
    # progress was shown phase by phase; the settings used were printed
    joined = "\n".join(lines)
    for phase in ("scenario rbf-shift", "training_window=", "initial champion", "processors worker", "fault injection",
                  "DRIFT 1 at event 3000", "streaming done"):
        assert phase in joined, f"no progress line about {phase!r}:\n{joined}"
    # the loop closed after the drift (a promotion by the policy between the drift and the end)
    assert result.drift_points == [3000] and result.closed == [True], text
    assert s["triggers"] >= 2, text
    assert set(s["triggers_by_reason"]) - {"manual"}, f"only manual triggers fired:\n{text}"
    assert s["training_runs"] >= 2, text
    assert s["candidates_rejected"] >= 1, text
    assert s["promotions"] >= 1, text
    assert result.loop_closed and result.ok, text
    assert len(s["champions"]) >= 2 and s["champions"][-1] != s["champions"][0]
    # counts from the topics match what the demo served: the whole scenario
    assert s["predictions"] == 6000, text
    assert 0.35 < s["reviewed"] / s["predictions"] < 0.6
    # served accuracy: good before the drift, good again at the end of the phase
    acc = s["accuracy"]
    assert acc["before_drift"] > 0.85, text
    # effectiveness: every contender on the same 6000 events, whole stream first
    cmp = result.comparison.as_dict()
    assert list(cmp["accuracy"]) == [NEVER, HAT, ARF, SLIDING, CTLOOP]
    assert cmp["windows"][0] == {"name": "whole stream", "start": 0, "end": 6000, "kind": "whole"}
    assert cmp["by_kind"][NEVER]["after_drift"] < 0.7, text  # the world changed
    assert cmp["accuracy"][CTLOOP]["events 5000-6000"] > cmp["accuracy"][NEVER]["events 5000-6000"] + 0.15, text
    # report written from ClickHouse
    assert result.report_path is not None and result.report_path.exists()
    assert "<html" in result.report_path.read_text()[:2000].lower()
    json.dumps(result.as_dict(), default=str)
