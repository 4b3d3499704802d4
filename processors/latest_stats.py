"""The latest feedback-loop counters (FeedbackLoopStats) of a deployment, read from feedback-stats.

feedback-stats is keyed by deployment, so every FeedbackLoopStats of one deployment lands on one
partition (the key's partition under ``settings.producer_partitioner``) and, within it, the log order
is the order the processors published them. "Latest" is therefore the highest offset in that
partition, never the largest ``event_time``: producer clocks differ between processor workers and
restarts, and a worker taking over a deployment may publish with an older clock.
"""
from __future__ import annotations

from processors.ownership import partition_for
from streams.consumer import Event, end_offset_consumer, read_to_end
from streams.topics import Topics


def key_partition(settings, topic: str, key: str, *, timeout_s: float = 15.0) -> int | None:
    """The partition ``key`` goes to on ``topic`` with ``settings.producer_partitioner``; None when the
    topic does not exist. Raises ValueError for a partitioner that cannot place keys (see
    :func:`processors.ownership.partition_for`)."""
    consumer = end_offset_consumer(settings)
    try:
        md = consumer.list_topics(topic, timeout=timeout_s)
    finally:
        consumer.close()
    meta = md.topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        return None
    return partition_for(key, len(meta.partitions), settings.producer_partitioner)


def latest_of(events: list[Event], deployment: str, partition: int | None) -> Event | None:
    """The FeedbackLoopStats event of ``deployment`` with the highest offset in ``partition`` (the
    deployment's key partition), or None when that partition has none. Pure: no I/O."""
    best = None
    for e in events:
        if e.value.get("deployment") != deployment or e.partition != partition:
            continue
        if best is None or e.offset > best.offset:
            best = e
    return best


def latest_feedback_stats(settings, deployment: str, *, timeout_s: float = 15.0) -> dict | None:
    """The deployment's latest FeedbackLoopStats, or None when feedback-stats has none for it.

    Returns ``{"stats": <the FeedbackLoopStats record>, "partition": p, "offset": o,
    "other_partitions": [partitions that also hold stats of this deployment]}``. The topic is read
    to its end on every partition; the latest is the highest offset in the deployment's key partition
    (see the module doc). Stats of the deployment on other partitions (written with another
    partitioner, or before the partition count changed) are not compared with it: they are only
    listed in ``other_partitions``, and when the key partition has none the result is None.
    Raises TimeoutError when the topic cannot be read within ``timeout_s`` seconds."""
    topic = Topics.from_settings(settings).feedback_stats
    partition = key_partition(settings, topic, deployment, timeout_s=timeout_s)
    if partition is None:
        return None
    events = [e for e in read_to_end(settings, topic, timeout_s=timeout_s) if e.value.get("deployment") == deployment]
    latest = latest_of(events, deployment, partition)
    others = sorted({e.partition for e in events if e.partition != partition})
    if latest is None:
        return {"stats": None, "partition": partition, "offset": None, "other_partitions": others} if others else None
    return {"stats": latest.value, "partition": partition, "offset": latest.offset, "other_partitions": others}
