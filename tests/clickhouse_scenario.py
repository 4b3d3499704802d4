"""A known feedback-loop history published on Kafka, for the ClickHouse sink, view and report tests.

Deployment ``fraud`` (times from T0, one prediction a minute):
* 20 primary predictions p0..p19 by model "1", 5 shadow predictions (p0..p4) by model "2";
* feedback for p0..p11 (12 reviewed), p10 twice (a label, then a correction);
* labeled examples p0..p9: p0..p5 before snapshot 1, p6..p9 before snapshot 2 (plus 2 labeled examples
  of deployment ``churn`` before snapshot 1, which fraud models must not claim);
* model "1" registered first (no lineage), "2" trained on snapshot 1 and registered at T0+40min, "3"
  trained on snapshot 2 and registered at T0+50min;
* 3 drift measurements (the third detects drift), 1 trigger, 2 shadow comparisons, a promotion of
  "2", an evaluation rejection of "3" and a rollback from "2" to "1".
Deployment ``churn``: 3 predictions, 1 feedback, the 2 labeled examples.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from streams import catalog as ev
from streams.consumer import end_offsets
from streams.producer import EventProducer
from streams.sdk import CtloopClient
from streams.serde import new_event
from streams.topics import Topics

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000


@dataclass
class Scenario:
    t0: int = T0
    predictions: list[str] = field(default_factory=list)
    churn_predictions: list[str] = field(default_factory=list)
    feedback_time: dict[str, int] = field(default_factory=dict)
    snapshot1: list[dict] = field(default_factory=list)
    snapshot2: list[dict] = field(default_factory=list)
    registered_at: dict[str, int] = field(default_factory=dict)
    produced: dict[str, int] = field(default_factory=dict)
    """Events produced per table name."""


def scenario_settings(kafka_bootstrap: str, clickhouse_url: str, data_dir, database_prefix: str):
    """Settings of one isolated scenario run: its own topic prefix and ClickHouse database; topics created."""
    from confluent_kafka.admin import AdminClient

    from infra.settings import Settings
    from streams.topics import ensure_topics

    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
                        data_dir=str(data_dir), clickhouse_url=clickhouse_url,
                        clickhouse_database=f"{database_prefix}_{uuid.uuid4().hex[:10]}", sink_flush_interval_s=0.2,
                        event_time_max_past_s=0)  # the scenario backfills events of T0 (no past bound)
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), Topics.from_settings(settings))
    return settings


def _snapshot(settings, topic: str, partitions: int) -> list[dict]:
    """The snapshot a trigger takes: end offsets of every partition (start 0), read as the trigger reads
    them (streams.consumer.end_offsets, right on the embedded broker for multi-record batches too)."""
    ends = end_offsets(settings, topic)
    return [{"partition": p, "start_offset": 0, "end_offset": ends[p]} for p in range(partitions)]


def publish_scenario(settings, *, garbage: bool = True) -> Scenario:
    topics = Topics.from_settings(settings)
    sc = Scenario()
    count = sc.produced
    producer = EventProducer(settings)
    client = CtloopClient(settings, producer=producer)

    def emit(topic, event_type, table, key, **fields):
        producer.produce(topic, event_type, new_event(event_type, **fields), key=key)
        count[table] = count.get(table, 0) + 1

    # predictions and feedback through the SDK
    for i in range(20):
        pid = client.log_prediction("fraud", {"x": float(i), "y": 1.0}, label="a" if i % 2 else "b",
                                    model_version="1", model_name="m", event_time=T0 + i * MIN)
        sc.predictions.append(pid)
        if i < 5:
            client.log_prediction("fraud", {"x": float(i), "y": 1.0}, label="a", model_version="2", model_name="m",
                                  role="shadow", prediction_id=pid, event_time=T0 + i * MIN)
    for i in range(3):
        sc.churn_predictions.append(client.log_prediction("churn", {"z": 1.0}, label="stay", model_version="7",
                                                          event_time=T0 + i * MIN))
    count["predictions"] = 20 + 5 + 3
    for i in range(12):
        ft = T0 + i * MIN + 30_000
        sc.feedback_time[sc.predictions[i]] = ft
        client.log_feedback(sc.predictions[i], "fraud", label="a", event_time=ft)
    client.log_feedback(sc.predictions[10], "fraud", label="b", feedback_type="correction", event_time=T0 + 11 * MIN)
    client.log_feedback(sc.churn_predictions[0], "churn", label="leave", event_time=T0 + MIN)
    count["feedback"] = 12 + 1 + 1

    def labeled(i, deployment="fraud", pid=None):
        pid = pid or sc.predictions[i]
        ft = sc.feedback_time.get(pid, T0 + MIN)
        emit(topics.labeled_examples, ev.LABELED_EXAMPLE, "labeled_examples", pid, prediction_id=pid,
             deployment=deployment, model_version="1", role="primary", features={"x": float(i)},
             predicted_label="a", label="a", correct=i % 3 != 0, feedback_event_id=str(uuid.uuid4()),
             prediction_time=T0 + i * MIN, feedback_time=ft, event_time=ft + 1000)

    for i in range(6):
        labeled(i)
    labeled(0, "churn", sc.churn_predictions[0])
    labeled(1, "churn", sc.churn_predictions[1])
    producer.flush()
    parts = topics.partitions("labeled-examples")
    sc.snapshot1 = _snapshot(settings, topics.labeled_examples, parts)
    for i in range(6, 10):
        labeled(i)
    producer.flush()
    sc.snapshot2 = _snapshot(settings, topics.labeled_examples, parts)

    # drift, trigger, training, registry
    for k, detected in enumerate((False, False, True)):
        emit(topics.drift, ev.DRIFT_MEASURED, "drift", "fraud", deployment="fraud", model_version="1",
             window_start=T0 + k * 5 * MIN, window_end=T0 + (k + 1) * 5 * MIN, window_size=5, reference="training_data",
             features=[{"feature": "x", "psi": 0.1 + 0.2 * k, "ks_statistic": 0.2, "ks_pvalue": 0.5,
                        "adwin_detected": False, "drifted": detected, "psi_threshold": 0.2,
                        "missing_rate": 0.0, "reference_missing_rate": 0.0, "missing_rate_changed": False}],
             drift_share=1.0 if detected else 0.0, drift_threshold=0.5, drift_detected=detected,
             event_time=T0 + (k + 1) * 5 * MIN)
    trigger_id = str(uuid.uuid4())
    emit(topics.triggers, ev.TRAINING_TRIGGERED, "triggers", "fraud", trigger_id=trigger_id, deployment="fraud",
         reason="drift", snapshot_topic=topics.labeled_examples, snapshot=sc.snapshot2, event_time=T0 + 16 * MIN)

    def lineage(snapshot, rows):
        return {"topic": topics.labeled_examples, "partitions": snapshot, "row_count": rows, "train_rows": rows,
                "holdout_rows": 0, "content_hash": "h", "base_dataset": None}

    emit(topics.model_lifecycle, ev.MODEL_REGISTERED, "models_registered", "fraud", deployment="fraud",
         model_name="m", model_version="1", alias="champion", metrics={"accuracy": 0.7}, artifact_uri="file:///1",
         artifact_sha256="0", event_time=T0 - MIN)
    sc.registered_at["1"] = T0 - MIN
    for version, snapshot, rows, reg in (("2", sc.snapshot1, 6, T0 + 40 * MIN), ("3", sc.snapshot2, 10, T0 + 50 * MIN)):
        run_id = str(uuid.uuid4())
        emit(topics.model_lifecycle, ev.TRAINING_RUN_STARTED, "training_runs_started", "fraud", run_id=run_id,
             trigger_id=trigger_id, deployment="fraud", trainer_id="t1", device="cpu", event_time=reg - 5 * MIN)
        emit(topics.model_lifecycle, ev.TRAINING_RUN_FINISHED, "training_runs_finished", "fraud", run_id=run_id,
             trigger_id=trigger_id, deployment="fraud", model_version=version, metrics={"accuracy": 0.8},
             lineage=lineage(snapshot, rows), code_version="c", environment={"torch": "2"}, artifact_uri="file:///x",
             artifact_sha256="0", duration_ms=1000, samples_per_second=10.0, event_time=reg - MIN)
        emit(topics.model_lifecycle, ev.MODEL_REGISTERED, "models_registered", "fraud", deployment="fraud",
             model_name="m", model_version=version, run_id=run_id, trigger_id=trigger_id, alias="challenger",
             metrics={"accuracy": 0.8}, champion_version="1", lineage=lineage(snapshot, rows),
             artifact_uri=f"file:///{version}", artifact_sha256="0", event_time=reg)
        sc.registered_at[version] = reg
    emit(topics.model_lifecycle, ev.TRAINING_RUN_FAILED, "training_runs_failed", "fraud", run_id=str(uuid.uuid4()),
         trigger_id=trigger_id, deployment="fraud", reason="oom", error_type="RuntimeError", event_time=T0 + 45 * MIN)
    for k, (pa, sa) in enumerate(((0.70, 0.80), (0.72, 0.85))):
        emit(topics.shadow_comparisons, ev.SHADOW_COMPARISON, "shadow_comparisons", "fraud", deployment="fraud",
             primary_version="1", shadow_version="2", paired_samples=100 * (k + 1), labeled_samples=50 * (k + 1),
             primary_metrics={"accuracy": pa}, shadow_metrics={"accuracy": sa}, agreement_rate=0.9,
             event_time=T0 + (42 + k) * MIN)
    emit(topics.model_updates, ev.MODEL_PROMOTED, "models_promoted", "fraud", deployment="fraud", model_version="2",
         previous_version="1", decided_by="policy", reason="better", event_time=T0 + 44 * MIN)
    emit(topics.model_lifecycle, ev.CANDIDATE_REJECTED, "candidates_rejected", "fraud", deployment="fraud",
         model_version="3", stage="evaluation", reasons=["worse than champion"], metrics={"accuracy": 0.6},
         champion_version="2", champion_metrics={"accuracy": 0.8}, event_time=T0 + 51 * MIN)
    emit(topics.model_updates, ev.MODEL_ROLLED_BACK, "models_rolled_back", "fraud", deployment="fraud",
         from_version="2", to_version="1", decided_by="manual", reason="operator", event_time=T0 + 55 * MIN)
    emit(topics.feedback_stats, ev.FEEDBACK_LOOP_STATS, "feedback_stats", "fraud", deployment="fraud",
         predictions_logged=20, feedback_received=13, reviewed=12, added_to_training=10,
         reviewed_since_last_training=4, trigger_threshold=10, progress=0.4, event_time=T0 + 20 * MIN)
    emit(topics.deployments, ev.DEPLOYMENT_CONFIGURED, "deployment_configs", "fraud", deployment="fraud",
         change="setup_feedback_loop", model_name="m", event_time=T0 - 2 * MIN)
    if garbage:
        # on a topic whose refused records the sink dead-letters itself (streams.dead_letters.DEAD_LETTER_OWNERS)
        producer.produce_raw(topics.model_updates, b"not an event", b"k")
        count["dead_letters"] = 1
    producer.flush()
    client.close()
    producer.close()
    return sc
