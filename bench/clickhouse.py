"""ClickHouse benchmark: how fast the sink stores events into embedded chdb, and how long the
feedback-funnel view takes over 1M predictions.

Figures (see bench/README.md for the interface):

* sink throughput: predictions produced with the SDK on the embedded broker, then
  ``ClickHouseSink.run_until_caught_up`` (Kafka consume + decode + row building + batched insert +
  commit), rows/s; peer: clickhouse-connect inserting the same rows straight into the same table
  (no Kafka), i.e. the ceiling the sink could reach;
* funnel view query time over 1M predictions (300k feedback, 200k labeled examples, a model lineage
  covering half of them). These rows are generated INSIDE ClickHouse with ``INSERT ... SELECT FROM
  numbers()``, not produced through Kafka (that would measure the sink again, for minutes); peer: the
  same four counts without FINAL / dedup (what the deduplication costs).

    python bench/clickhouse.py [--quick]
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _settings(tmp: str, bootstrap: str = ""):
    from infra.settings import Settings

    return Settings(bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:6]}.", data_dir=tmp,
                    clickhouse_database="bench", sink_batch_size=20_000, sink_flush_interval_s=1.0)


def measure_sink(settings, events: int) -> tuple[float, float]:
    """(sink rows/s, direct insert rows/s)."""
    from confluent_kafka.admin import AdminClient

    from infra.clickhouse_sink import ClickHouseSink
    from streams.sdk import CtloopClient
    from streams.kafka_config import client_config
    from streams.topics import Topics, ensure_topics

    ensure_topics(AdminClient(client_config(settings)), Topics.from_settings(settings))
    with CtloopClient(settings) as client:
        for i in range(events):
            client.log_prediction("bench", {"a": float(i % 97), "b": 1.5, "c": float(i % 7)}, label=str(i % 3),
                                  model_version="1", probabilities={"0": 0.2, "1": 0.3, "2": 0.5})
        client.flush()
    with ClickHouseSink(settings) as sink:
        sink.consumer.wait_for_assignment(60)
        started = time.perf_counter()
        stored = sink.run_until_caught_up(timeout_s=600)
        sink_s = time.perf_counter() - started
        if stored != events:
            raise RuntimeError(f"sink stored {stored} rows, expected {events}")
        # peer: the same rows inserted directly (what the sink's own insert costs without Kafka)
        client = sink.client
        columns = sink._columns["predictions"]
        rows = client.query(f"SELECT {', '.join(columns)} FROM predictions").result_rows
        client.command("CREATE TABLE IF NOT EXISTS predictions_direct AS predictions")
        started = time.perf_counter()
        for lo in range(0, len(rows), settings.sink_batch_size):
            client.insert("predictions_direct", rows[lo:lo + settings.sink_batch_size], column_names=columns)
        direct_s = time.perf_counter() - started
    return events / sink_s, len(rows) / direct_s


FUNNEL_NO_DEDUP = """
SELECT p.deployment, p.logged, f.reviewed, l.added, t.trained FROM
 (SELECT deployment, count() AS logged FROM predictions WHERE role != 'shadow' GROUP BY deployment) AS p
 LEFT JOIN (SELECT deployment, count() AS reviewed FROM feedback GROUP BY deployment) AS f USING deployment
 LEFT JOIN (SELECT deployment, count() AS added FROM labeled_examples GROUP BY deployment) AS l USING deployment
 LEFT JOIN (SELECT deployment, count() AS trained FROM model_training_examples GROUP BY deployment) AS t USING deployment
"""


def load_funnel_data(client, predictions: int) -> None:
    """predictions rows, 30% with feedback, 20% labeled examples, lineage over half of those."""
    n, topic = predictions, "bench.labeled-examples"
    client.command(f"""INSERT INTO predictions (event_id, event_time, prediction_id, deployment, model_name,
        model_version, role, features, label, score, probabilities, latency_ms, kafka_topic, kafka_partition, kafka_offset)
        SELECT generateUUIDv4(), toDateTime64('2026-01-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(number * 10),
               reinterpretAsUUID(sipHash128(number)), concat('dep', toString(number % 4)), 'm', '1', 'primary',
               map('a', toFloat64(number % 97), 'b', 1.5), toString(number % 3), NULL, map(), 1.0,
               'bench.predictions', number % 8, intDiv(number, 8)
        FROM numbers({n})""")
    client.command(f"""INSERT INTO feedback (event_id, event_time, prediction_id, deployment, feedback_type, kind,
        label, verdict, reviewer, kafka_topic, kafka_partition, kafka_offset)
        SELECT generateUUIDv4(), toDateTime64('2026-01-01 00:00:05', 3, 'UTC') + toIntervalMillisecond(number * 10),
               reinterpretAsUUID(sipHash128(number)), concat('dep', toString(number % 4)), 'label', 'explicit',
               toString(number % 3), NULL, NULL, 'bench.feedback', number % 8, intDiv(number, 8)
        FROM numbers({n}) WHERE number % 10 < 3""")
    client.command(f"""INSERT INTO labeled_examples (event_id, event_time, prediction_id, deployment, model_version,
        role, features, predicted_label, label, correct, feedback_event_id, prediction_time, feedback_time,
        kafka_topic, kafka_partition, kafka_offset)
        SELECT generateUUIDv4(), toDateTime64('2026-01-01 00:00:06', 3, 'UTC') + toIntervalMillisecond(k * 10),
               reinterpretAsUUID(sipHash128(k)), concat('dep', toString(k % 4)), '1', 'primary', map('a', 1.0),
               '1', toString(k % 3), k % 3 = 1, generateUUIDv4(),
               toDateTime64('2026-01-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(k * 10),
               toDateTime64('2026-01-01 00:00:05', 3, 'UTC') + toIntervalMillisecond(k * 10),
               '{topic}', toInt32(number % 8), toInt64(intDiv(number, 8))
        FROM (SELECT number, number * 5 AS k FROM numbers({n // 5}))""")
    half = n // 5 // 8 // 2
    for dep in range(4):
        client.command(f"""INSERT INTO models_registered (event_id, event_time, deployment, model_name, model_version,
            run_id, trigger_id, alias, metrics, champion_version, champion_metrics, lineage_topic, lineage_partitions,
            lineage_start_offsets, lineage_end_offsets, lineage_row_count, artifact_uri, artifact_sha256,
            model_factory, model_config, kafka_topic, kafka_partition, kafka_offset)
            VALUES (generateUUIDv4(), toDateTime64('2026-01-02 00:00:00', 3, 'UTC'), 'dep{dep}', 'm', '2', NULL, NULL,
            'champion', map('accuracy', 0.9), '1', map(), '{topic}', range(8), arrayResize([toInt64(0)], 8, 0),
            arrayResize([toInt64({half})], 8, {half}), {half * 8}, 'file:///x', '0', '', map(), 'bench.model-lifecycle', 0, {dep})""")



def measure_funnel(client, repeats: int = 5) -> tuple[float, float, list]:
    def timed(sql):
        times, rows = [], None
        for _ in range(repeats):
            started = time.perf_counter()
            rows = client.query(sql).result_rows
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000, rows

    view_ms, rows = timed("SELECT * FROM feedback_funnel ORDER BY deployment")
    plain_ms, _ = timed(FUNNEL_NO_DEDUP)
    return view_ms, plain_ms, rows


def run(quick: bool) -> list[dict]:
    from infra.clickhouse import connect
    from infra.stack import kafka_stack

    sink_events = 5_000 if quick else 100_000
    predictions = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="ctloop-bench-ch-") as tmp:
        with kafka_stack(_settings(tmp)) as settings:
            sink_rate, direct_rate = measure_sink(settings, sink_events)
            client = connect(settings.replace(clickhouse_database="funnel"))
            started = time.perf_counter()
            load_funnel_data(client, predictions)
            load_s = time.perf_counter() - started
            view_ms, plain_ms, rows = measure_funnel(client, 3 if quick else 5)
    logged = sum(r[1] for r in rows)
    if logged != predictions:
        raise RuntimeError(f"funnel counted {logged} predictions, expected {predictions}")
    return [
        {"name": f"ClickHouse sink into chdb ({sink_events} predictions via Kafka)", "value": round(sink_rate),
         "unit": "rows/s", "peer_name": "clickhouse-connect insert of the same rows, no Kafka",
         "peer_value": round(direct_rate)},
        {"name": f"feedback_funnel view over {predictions:,} predictions (FINAL + lineage join)",
         "value": round(view_ms, 1), "unit": "ms", "peer_name": "same counts without FINAL/dedup",
         "peer_value": round(plain_ms, 1),
         "notes": f"rows generated inside ClickHouse (INSERT SELECT numbers(), {load_s:.1f}s), not via Kafka; "
                  f"funnel {rows[0][1:]} for {rows[0][0]}"},
    ]


if __name__ == "__main__":
    for row in run("--quick" in sys.argv):
        print(row)
