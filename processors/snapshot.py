"""Training triggers as events: the dataset snapshot (end offsets of every labeled-examples
partition) and the TrainingTriggered record; shared by the triggers stage and ``ctloop trigger``."""
from __future__ import annotations

import uuid

from confluent_kafka import Consumer

from streams import catalog as ev
from streams.consumer import end_offsets
from streams.serde import new_event
from streams.topics import Topics


def labeled_examples_snapshot(settings, consumer: Consumer | None = None, timeout_s: float = 10.0) -> list[dict]:
    """[{partition, start_offset: 0, end_offset}] of every labeled-examples partition, now.
    Flush the producer of labeled examples first so the snapshot includes them. ``consumer``: one from
    streams.consumer.end_offset_consumer, reused across snapshots."""
    topic = Topics.from_settings(settings).labeled_examples
    ends = end_offsets(settings, topic, timeout_s=timeout_s, consumer=consumer)
    if not ends:
        raise RuntimeError(f"topic {topic} is not available")
    return [{"partition": p, "start_offset": 0, "end_offset": ends[p]} for p in sorted(ends)]


def trigger_record(settings, deployment: str, reason: str, evidence: dict, snapshot: list[dict], *,
                   training_mode: str = "full", requested_by: str | None = None,
                   idempotency_key: str | None = None) -> dict:
    """A TrainingTriggered record. ``idempotency_key`` (automatic triggers,
    ``TriggerPolicy.idempotency_key``): the trigger_id is its UUID5
    (processors.trigger_policy.trigger_id_for), so equal decisions have equal ids; None: a fresh random
    trigger_id (manual triggers)."""
    from processors.trigger_policy import trigger_id_for

    return new_event(ev.TRAINING_TRIGGERED,
                     trigger_id=trigger_id_for(idempotency_key) if idempotency_key else str(uuid.uuid4()),
                     idempotency_key=idempotency_key, deployment=deployment, reason=reason,
                     evidence={k: str(v) for k, v in evidence.items()},
                     snapshot_topic=Topics.from_settings(settings).labeled_examples, snapshot=snapshot,
                     training_mode=training_mode, requested_by=requested_by)


def publish_manual_trigger(settings, deployment: str, *, requested_by: str | None = None,
                           training_mode: str | None = None, timeout_s: float = 15.0) -> dict:
    """Publish a manual TrainingTriggered for ``deployment`` (always allowed, whatever the policies);
    returns the record. Its evidence carries added_to_training from the deployment's latest
    feedback-loop stats, so reviewed_since_last_training restarts from there."""
    from processors.latest_stats import latest_feedback_stats
    from streams.deployments import DeploymentSettingsClient
    from streams.producer import EventProducer
    from streams.validation import check_str

    check_str("deployment", deployment)
    if training_mode not in (None, "full", "finetune"):
        from streams.validation import InvalidEvent

        raise InvalidEvent("training_mode", f"must be full or finetune, got {training_mode!r}")
    topics = Topics.from_settings(settings)
    with EventProducer(settings) as producer:
        dep_settings = DeploymentSettingsClient(settings, producer=producer).current(deployment)
        found = latest_feedback_stats(settings, deployment, timeout_s=timeout_s)
        latest = found["stats"] if found else None   # by log position, never by a producer clock
        evidence = {"requested_by": requested_by or ""}
        if latest:
            evidence.update(added_to_training=latest["added_to_training"], reviewed=latest["reviewed"])
        record = trigger_record(settings, deployment, "manual", evidence, labeled_examples_snapshot(settings, timeout_s=timeout_s),
                                training_mode=training_mode or dep_settings.get("training_mode") or "full",
                                requested_by=requested_by)
        producer.produce(topics.triggers, ev.TRAINING_TRIGGERED, record, key=deployment)
        producer.flush(timeout_s)
    return record
