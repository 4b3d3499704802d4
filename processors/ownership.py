"""Which deployments this processor worker owns, when several workers share one consumer group.

Every deployment-keyed topic the processors read (feedback-stats, drift and the internal topics
``<prefix>feedback-partials``, ``<prefix>performance-pairs``, ``<prefix>drift-inputs``) has
``default_partitions`` partitions and is written by confluent-kafka producers with
``settings.producer_partitioner``, so a deployment lands on the same partition number p of each.
faust's assignor gives one worker partition p of every co-subscribed topic with that partition count
(a co-partitioned group), so that worker is the deployment's **owner**: it aggregates its counters,
drift windows and live performance, decides its triggers and runs its timers. Timers have no input
event, so they ask :meth:`Ownership.owns`.
"""
from __future__ import annotations

import zlib


def partition_for(key: str | bytes, partitions: int, partitioner: str = "consistent_random") -> int:
    """The partition librdkafka's ``partitioner`` gives a non-empty ``key`` on a topic of
    ``partitions`` partitions: consistent_random/consistent = CRC32(key) mod n; murmur2_random/murmur2
    = Kafka's Java murmur2 (positive) mod n. ValueError for other partitioners or n < 1."""
    if partitions < 1:
        raise ValueError(f"partitions: must be positive, got {partitions}")
    data = key.encode() if isinstance(key, str) else bytes(key)
    if partitioner in ("consistent_random", "consistent"):
        return zlib.crc32(data) % partitions
    if partitioner in ("murmur2_random", "murmur2"):
        from aiokafka.partitioner import murmur2

        return (murmur2(data) & 0x7FFFFFFF) % partitions
    raise ValueError(f"producer_partitioner: cannot place keys with {partitioner!r}; "
                     "use consistent_random or murmur2_random")


class Ownership:
    """``owns(deployment)``: whether this worker is assigned the deployment's partition of ``topic``
    (a deployment-keyed topic of ``partitions`` partitions). ``assignment()`` returns the worker's
    assigned (topic, partition) pairs (faust: ``app.consumer.assignment()``)."""

    def __init__(self, assignment, topic: str, partitions: int, partitioner: str):
        self._assignment = assignment
        self.topic = topic
        self.partitions = partitions
        self.partitioner = partitioner

    @classmethod
    def of_app(cls, app, topic: str, partitions: int, partitioner: str) -> "Ownership":
        """The ownership of a faust ``app``'s consumer assignment (no assignment while it starts)."""
        def assignment():
            try:
                return [(tp.topic, tp.partition) for tp in app.consumer.assignment()]
            except Exception:  # noqa: BLE001 - no consumer yet (starting) or none (no agents)
                return []
        return cls(assignment, topic, partitions, partitioner)

    def partition(self, deployment: str) -> int:
        """The partition of ``topic`` the deployment's key maps to. Raises ValueError for an unknown
        partitioner."""
        return partition_for(deployment, self.partitions, self.partitioner)

    def owns(self, deployment: str) -> bool:
        """Whether this worker is assigned the deployment's partition of ``topic`` now."""
        p = self.partition(deployment)
        return any(t == self.topic and q == p for t, q in self._assignment())


INTERNAL_TOPICS = ("feedback-partials", "performance-pairs", "drift-inputs", "fallback-examples")
"""Internal deployment-keyed topics (``<prefix>`` + name; JSON values; ``default_partitions``)."""


def internal_topic_specs(settings) -> list:
    """NewTopic specs of the internal topics: ``default_partitions`` partitions (co-partitioned with
    feedback-stats and drift), 7 days' retention."""
    from confluent_kafka.admin import NewTopic

    return [NewTopic(f"{settings.topic_prefix}{name}", num_partitions=settings.default_partitions,
                     replication_factor=settings.replication_factor,
                     config={"retention.ms": str(7 * 24 * 3600 * 1000)}) for name in INTERNAL_TOPICS]


def ensure_internal_topics(admin, settings, timeout_s: float = 30.0) -> list[str]:
    """Create the internal deployment-keyed topics that are missing (``default_partitions`` partitions,
    so they are co-partitioned with feedback-stats and drift; 7 days' retention). Returns their names.
    RuntimeError naming the topic when the broker refuses one."""
    from streams.topics import create_topics

    specs = internal_topic_specs(settings)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    create_topics(admin, [s for s in specs if s.topic not in existing], timeout_s)
    return [s.topic for s in specs]


def forget_unassigned(table, assigned: set[int], partition_of) -> int:
    """Drop the in-memory rows of ``table`` (a faust Table or a dict) whose partition, per
    ``partition_of(key, value)`` (None: keep), is not in ``assigned``: faust's memory store keeps the
    rows of revoked partitions, and a timer sweeping them (the join's expiry) would act for partitions
    another worker owns now. No changelog record is written. Returns the rows dropped."""
    data = table if isinstance(table, dict) else table.data
    dropped = 0
    for key, value in list(data.items()):
        p = partition_of(key, value)
        if p is not None and p not in assigned:
            del data[key]
            dropped += 1
    return dropped


async def forward_to_owners(ctx, events, *, component: str, topic: str, item_of, field: str = "items",
                            what: str = "a row", with_message: bool = False) -> int:
    """Send a batch of faust ``events`` to the deployments' owners: decode each (a bad record is
    dead-lettered by its topic's owner, see processors.dead_letters), map it with ``item_of(event_type,
    value)`` (``with_message``: ``item_of(event_type, value, message)``, the source record; None: skip) and produce the items, grouped by deployment, to the internal ``topic`` keyed by
    deployment as JSON ``{field: [...]}`` messages within ``max_message_bytes`` (an item over it alone is
    logged and skipped). Flushes ``ctx.producer`` once before returning, so the items and the batch's dead
    letters are durable before the source batch is acknowledged. Returns the number of items forwarded."""
    import asyncio
    import logging

    from processors.dead_letters import decode_message
    from streams.record_size import json_batches

    log = logging.getLogger(component)
    by_dep: dict[str, list] = {}
    refused: list = []
    for event in events:
        # dead letters of refused records are flushed once, below, with the items (not one flush each)
        decoded = decode_message(ctx, event.message, component, on_reject=refused.append, flush=False)
        if decoded is None:
            continue
        item = item_of(*decoded, event.message) if with_message else item_of(*decoded)
        if item is not None:
            by_dep.setdefault(decoded[1]["deployment"], []).append(item)
    for dep, items in by_dep.items():
        for raw, _ in json_batches(items, ctx.settings.max_message_bytes, field=field, key=dep, what=what,
                                   on_oversize=lambda _item, exc: log.error("%s", exc)):
            ctx.producer.produce_raw(topic, raw, key=dep)
    if by_dep or refused:
        await asyncio.get_running_loop().run_in_executor(None, ctx.producer.flush)
    return sum(len(items) for items in by_dep.values())
