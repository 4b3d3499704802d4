"""Training triggers as events: the dataset snapshot (the window of every labeled-examples partition,
per the deployment's ``training_window``) and the TrainingTriggered record; shared by the triggers
stage and ``ctloop trigger``.

The triggers stage computes windows from its own fold (processors/training_window.py). Where there is
no fold (``ctloop trigger``) or the stage's fold has not seen enough of the deployment (it restarted),
:func:`window_from_log` reads the deployment's labeled examples from the log: their order across
partitions is their LabeledExample ``event_time`` (the feedback's time; ties in log order), and
the change point is the latest one a trigger of the deployment named (its evidence
``change_point_offsets``)."""
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


def snapshot_ends(snapshot: list[dict]) -> dict[int, int]:
    """partition -> end_offset of a snapshot."""
    return {int(p["partition"]): int(p["end_offset"]) for p in snapshot}


def latest_change_point(settings, deployment: str, *, timeout_s: float = 15.0) -> dict | None:
    """The evidence of the deployment's latest trigger (log order) that named a change point
    (``change_point_offsets``), or None."""
    from streams.consumer import read_to_end

    found = None
    for e in read_to_end(settings, Topics.from_settings(settings).triggers, timeout_s=timeout_s):
        if e.event_type == ev.TRAINING_TRIGGERED and e.value.get("deployment") == deployment \
                and (e.value.get("evidence") or {}).get("change_point_offsets"):
            found = e.value["evidence"]   # a deployment's triggers share one partition: the last is the latest
    return found


def window_from_log(settings, deployment: str, dep_settings: dict, ends: dict[int, int], *,
                    timeout_s: float = 15.0) -> tuple[list[dict], dict]:
    """(snapshot, evidence) of the deployment's training window read from the log (see the module doc):
    ``all`` from 0; ``sliding`` the last training_window_labels examples (or training_window_seconds
    of them); ``since_change`` from the latest change point a trigger named (capped to the last
    training_window_labels), the sliding window when none is known. ``ends``: partition -> end offset."""
    from processors.training_window import LabelWindow, offsets_of, parse_offsets, window_settings
    from streams.consumer import read_to_end
    from streams.serde import now_ms

    kind, labels, seconds, _ = window_settings(dep_settings)
    if kind == "all":
        return [{"partition": p, "start_offset": 0, "end_offset": ends[p]} for p in sorted(ends)], \
            {"training_window": "all"}
    events = [e for e in read_to_end(settings, Topics.from_settings(settings).labeled_examples, timeout_s=timeout_s)
              if e.event_type == ev.LABELED_EXAMPLE and e.value.get("deployment") == deployment
              and e.offset < ends.get(e.partition, 0)]
    events.sort(key=lambda e: (int(e.value["event_time"]), e.partition, e.offset))
    window = LabelWindow(max_positions=max(1, len(events)))
    for e in events:
        window.add(e.partition, e.offset, prediction_time=int(e.value["prediction_time"]),
                   event_time=int(e.value["event_time"]))
    change = latest_change_point(settings, deployment, timeout_s=timeout_s) if kind == "since_change" else None
    if change is None:
        snapshot, evidence = window.snapshot("sliding", ends, labels=labels, seconds=seconds, now_ms=now_ms())
        if kind == "since_change":
            evidence["change_point"] = "none known: the sliding window"
        return snapshot, evidence
    starts = parse_offsets(change["change_point_offsets"])
    after = [p for p in window.positions if p.offset >= starts.get(p.partition, ends.get(p.partition, 0))]
    members = after[-labels:] if labels > 0 else after
    return offsets_of(members, ends), {
        "training_window": "since_change", "window_labels": len(members), "post_change_labels": len(after),
        "change_point": change.get("change_point", ""), "change_point_offsets": change["change_point_offsets"]}


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
    feedback-loop stats, so reviewed_since_last_training restarts from there, and its snapshot is the
    deployment's training window read from the log (:func:`window_from_log`)."""
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
        ends = snapshot_ends(labeled_examples_snapshot(settings, timeout_s=timeout_s))
        snapshot, window = window_from_log(settings, deployment, dep_settings, ends, timeout_s=timeout_s)
        evidence.update(window)
        record = trigger_record(settings, deployment, "manual", evidence, snapshot,
                                training_mode=training_mode or dep_settings.get("training_mode") or "full",
                                requested_by=requested_by)
        producer.produce(topics.triggers, ev.TRAINING_TRIGGERED, record, key=deployment)
        producer.flush(timeout_s)
    return record
