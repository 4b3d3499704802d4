"""A worker's own topics, checked at its start: every partition must serve what its end offset says.

Why: the embedded broker (Tansu, storage in memory) stores a produced batch under the topic's *name*
even when no topic of that name exists. After a broker restart the previous worker, in the second
before its liveness watch makes it exit (processors/liveness.py), still has the old broker's metadata
and its producers send their pending changelog and internal records there. A CreateTopics later (the
next worker's, or faust's declaration of a changelog) resets the partition's high watermark to 0 but
leaves those batches: ListOffsets(latest), which Tansu answers from the newest batch, says N while a
fetch serves nothing below the watermark (0). faust's table recovery then waits for offset N - 1 that
never comes ("No event received for active tp ... since recovery start") and the worker never becomes
ready; the next records written collide with the leftover batches' offsets.

:func:`unreadable_partitions` finds such partitions (ListOffsets end beyond the high watermark of a
fetch at that offset; a Kafka broker never answers so). :func:`repair_own_topics` creates the worker's
own topics that are missing (the leftovers can sit under a name no topic has yet), deletes those with
an unreadable partition and creates them again with their spec: deleting a topic removes every batch
under its name. Only the worker's own topics (table changelogs, internal topics): their content is the
state of a worker on a broker that lost everything else, and nobody else reads them.
"""
from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from infra.settings import Settings

from streams.topics import create_topics

log = logging.getLogger(__name__)


def unreadable_partitions(settings: Settings, topics: Iterable[str], timeout_s: float = 10.0) -> dict[str, list[int]]:
    """{topic: [partition, ...]} of ``topics`` whose end offset (ListOffsets latest) is beyond the high
    watermark a fetch at that offset reports. Topics that do not exist are skipped; a partition that
    gives no fetch answer within ``timeout_s`` is not reported (logged). ``settings``: the cluster's
    client configuration (:func:`streams.kafka_config.client_config`)."""
    from confluent_kafka import Consumer, TopicPartition

    from streams.kafka_config import client_config

    consumer = Consumer(client_config(settings, {"group.id": f"ctloop-topic-check-{uuid.uuid4().hex[:8]}",
                                                 "enable.auto.commit": False, "fetch.wait.max.ms": 10,
                                                 "log.connection.close": False, "fetch.message.max.bytes": 1024}))
    try:
        md = consumer.list_topics(timeout=timeout_s)
        ends: dict[tuple[str, int], int] = {}
        for name in sorted(set(topics)):
            tm = md.topics.get(name)
            if tm is None or tm.error is not None:
                continue
            for p in sorted(tm.partitions):
                _, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=timeout_s)
                if high > 0:
                    ends[(name, p)] = high
        if not ends:
            return {}
        consumer.assign([TopicPartition(t, p, end) for (t, p), end in ends.items()])
        served: dict[tuple[str, int], int] = {}
        deadline = time.monotonic() + timeout_s
        while len(served) < len(ends) and time.monotonic() < deadline:
            consumer.poll(0.05)   # the records themselves are not needed, only the fetch's high watermark
            for t, p in ends.keys() - served.keys():
                _, high = consumer.get_watermark_offsets(TopicPartition(t, p), cached=True)
                if high >= 0:
                    served[(t, p)] = high
        silent = sorted(ends.keys() - served.keys())
        if silent:
            log.warning("topic check: no fetch answer within %gs for %s", timeout_s,
                        ", ".join(f"{t}[{p}]" for t, p in silent[:5]))
        out: dict[str, list[int]] = {}
        for (t, p), high in sorted(served.items()):
            if high < ends[(t, p)]:
                out.setdefault(t, []).append(p)
        return out
    finally:
        consumer.close()


def own_topic_specs(settings, app) -> list:
    """NewTopic specs of a worker's own topics: the changelog of every table of ``app`` (as faust
    declares it: the table's partitions, compacted) and the internal topics (processors.ownership)."""
    from confluent_kafka.admin import NewTopic
    from mode.utils.times import want_seconds

    from processors.ownership import internal_topic_specs

    specs = list(internal_topic_specs(settings))
    for table in app.tables.values():
        topic = table.changelog_topic
        config: dict[str, str] = {str(k): str(v) for k, v in (topic.config or {}).items()}
        flags = sorted(({"compact"} if topic.compacting else set()) | ({"delete"} if topic.deleting else set()))
        if flags:
            config["cleanup.policy"] = ",".join(flags)
        if topic.retention:
            config["retention.ms"] = str(int(want_seconds(topic.retention) * 1000))
        specs.append(NewTopic(topic.get_topic_name(), num_partitions=topic.partitions or app.conf.topic_partitions,
                              replication_factor=topic.replicas or app.conf.topic_replication_factor, config=config))
    return specs


def repair_own_topics(settings: Settings, specs, timeout_s: float = 30.0) -> list[str]:
    """Create the topics of ``specs`` (NewTopic) that are missing, then delete and create again those
    with an unreadable partition (:func:`unreadable_partitions`). Returns the names made again.
    RuntimeError when a topic is still unreadable after that. ``settings``: the cluster's client
    configuration (:func:`streams.kafka_config.client_config`)."""
    from confluent_kafka.admin import AdminClient

    from streams.kafka_config import client_config

    admin = AdminClient(client_config(settings, {"log.connection.close": False}))
    by_name = {s.topic: s for s in specs}
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    create_topics(admin, [s for n, s in by_name.items() if n not in existing], timeout_s)
    broken = unreadable_partitions(settings, by_name, timeout_s=min(10.0, timeout_s))
    if not broken:
        return []
    log.warning("topics with records beyond their high watermark (a producer wrote them before the topic "
                "existed: a broker that restarted empty); deleting and creating them again: %s",
                ", ".join(f"{t}{ps}" for t, ps in broken.items()))
    for name, fut in admin.delete_topics(sorted(broken), operation_timeout=timeout_s).items():
        try:
            fut.result(timeout_s)
        except Exception as exc:  # noqa: BLE001 - another worker deleted it first
            log.info("topic repair: delete %s: %s", name, exc)
    deadline = time.monotonic() + timeout_s
    while set(broken) & set(admin.list_topics(timeout=timeout_s).topics):
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics {sorted(broken)} not deleted within {timeout_s}s")
        time.sleep(0.05)   # polling the deletion inside a deadline loop
    create_topics(admin, [by_name[n] for n in sorted(broken)], timeout_s)
    still = unreadable_partitions(settings, broken, timeout_s=min(10.0, timeout_s))
    if still:
        raise RuntimeError(f"topics still unreadable after they were made again: {still}")
    return sorted(broken)


def main() -> None:
    """``python -m processors.topic_repair``: repair the own topics of a worker with the settings of the
    environment (``CTLOOP_*``); prints the topics made again, one a line. For a supervisor, which runs no
    faust app of its own."""
    import os
    import sys

    from infra.settings import Settings
    from processors.app import build_app
    from processors.worker import stage_names

    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app, _ = build_app(settings, stages=stage_names(settings))
        made = repair_own_topics(settings, own_topic_specs(settings, app))
    except Exception:  # noqa: BLE001 - reported to the supervisor, which raises it
        log.exception("topic repair failed")
        logging.shutdown()
        os._exit(1)
    print("\n".join(made), flush=True)
    os._exit(0)   # the app's follower threads are not to be waited for


if __name__ == "__main__":
    main()
