"""Moved to :mod:`infra.clickhouse_sink` (next to the other analytics code); re-exported for infra/demo/runner.py, which the lead is editing."""
from infra.clickhouse_sink import SINK_COMPONENT, TABLES, ClickHouseSink, SinkError, event_row  # noqa: F401
