"""The online fallback in ClickHouse and the report: OnlineFallbackSwitched events land in their table
through the real sink (embedded broker, chdb), the online_fallback_decisions view lists them with the
promotions in log order, and the report folds them with the one fold rule (a stale switch refused)."""
from __future__ import annotations

import uuid

import pytest

from infra.report import fallback_summary, write_report
from infra.clickhouse_sink import ClickHouseSink
from streams import catalog as ev
from streams.producer import EventProducer
from streams.sdk import CtloopClient
from streams.serde import new_event

pytestmark = pytest.mark.timeout(120)


def switch(dep, active, expected):
    return new_event(ev.ONLINE_FALLBACK_SWITCHED, deployment=dep, active=active, learner="arf",
                     model_version="online:arf", champion_version="v1", reason="learner better",
                     evidence={"window": "200"}, expected_decision=expected)


@pytest.mark.slow
def test_switches_reach_clickhouse_and_the_report_folds_them(settings, clickhouse_url, topics):
    ch = settings.replace(clickhouse_url=clickhouse_url, clickhouse_database=f"t_{uuid.uuid4().hex[:10]}",
                          sink_flush_interval_s=0.2)
    dep = "fbr"
    on = switch(dep, True, None)
    stale = switch(dep, True, None)                       # a second owner's duplicate: refused
    promoted = new_event(ev.MODEL_PROMOTED, deployment=dep, model_version="v2", previous_version="v1",
                         decided_by="policy", reason="beats the fallback", expected_champion="v1")
    again = switch(dep, True, promoted["event_id"])
    with EventProducer(ch) as producer:
        for event_type, value in ((ev.ONLINE_FALLBACK_SWITCHED, on), (ev.ONLINE_FALLBACK_SWITCHED, stale),
                                  (ev.MODEL_PROMOTED, promoted), (ev.ONLINE_FALLBACK_SWITCHED, again)):
            producer.produce(topics.model_updates, event_type, value, key=dep)
    with CtloopClient(ch) as client:
        for version in ("online:arf", "online:arf", "v1"):
            client.log_prediction(dep, {"x": 1.0}, label="a", model_version=version)
    with ClickHouseSink(ch) as sink:
        sink.run_until_caught_up(timeout_s=60)
        db = ch.clickhouse_database
        stored = sink.client.query(f"SELECT count(), countIf(active) FROM {db}.online_fallback_switches FINAL").result_rows
        assert stored == [(3, 3)]
        kinds = [r[0] for r in sink.client.query(
            f"SELECT kind FROM {db}.online_fallback_decisions WHERE deployment = '{dep}' ORDER BY kafka_offset").result_rows]
        assert kinds == ["fallback_engaged", "fallback_engaged", "promoted", "fallback_engaged"]
        path = write_report(ch, ch.data_path / "report.html", client=sink.client)
    text = path.read_text()
    section = text[text.index("<h3>Online fallback</h3>"):]
    assert ("engaged 2 time(s), retired 1, 1 stale switch(es) refused; served 2 primary predictions; serving now"
            in section)
    accuracy = text[text.index(f'id="accuracy-{dep}"'):text.index("</svg>", text.index(f'id="accuracy-{dep}"'))]
    assert accuracy.count('class="marker fallback_on"') == 2 and accuracy.count('class="marker fallback_off"') == 1


def test_fallback_summary_orders_by_log_offset_not_by_row_order():
    rows = [(2, 3000, "p", "promoted", False, "v2", "v1", "better", None),
            (1, 2000, "a", "fallback_engaged", True, "online:arf", "v1", "learner better", None)]
    summary, markers = fallback_summary("d", rows)
    assert summary == {"engagements": 1, "retirements": 1, "refused": 0, "active": False}
    assert [m.kind for m in markers] == ["fallback_on", "fallback_off"]
