"""Re-injecting dead letters into their source topics once the cause is fixed (``ctloop dead-letters replay``).

Each DeadLetter carries the original key and bytes of a record and its source topic. A replay reads
the dead-letters topic to its end, keeps the dead letters matching the filters (source topic, error
types, source partition, source offset range), and for each one not replayed before produces the
original key and value to the source topic (header ``ctloop-replay-of: <dead-letters partition>:<offset>``),
then records it in the replay ledger.

**The ledger** is the internal compacted topic ``<prefix>dead-letter-replays``: one JSON record per
replayed dead letter, keyed ``<dead-letters partition>:<offset>``, value ``{"dead_letter": [partition,
offset], "source": [topic, partition, offset], "error_type", "replayed_to": [partition, offset],
"time_ms", "by"}``. A dead letter in the ledger is never replayed again. The replayed record is
flushed before its ledger record is written, so a crash in between may replay it once more: consumers
recognise the repeat by event id (the feedback join counts a feedback event id once; a second
prediction with the same id is ignored; the ClickHouse sink keeps one row per event id).

Not replayable: dead letters whose value was truncated to fit (``record_too_large`` with header
``ctloop-truncated``) and those without a value: they are reported, never sent.
"""
from __future__ import annotations

import getpass
import json
import time
from dataclasses import asdict, dataclass, field

from confluent_kafka import Producer

from streams import catalog as ev
from streams.consumer import read_messages_to_end
from streams.serde import DecodeError, Serde
from streams.topics import Topics

LEDGER_KEY = "dead-letter-replays"


@dataclass
class DeadLetterRecord:
    """One DeadLetter read back, with its place on the dead-letters topic and its headers."""
    partition: int
    offset: int
    value: dict
    headers: dict

    @property
    def ledger_key(self) -> str:
        return f"{self.partition}:{self.offset}"

    @property
    def truncated(self) -> bool:
        return self.headers.get("ctloop-truncated") == "true"


@dataclass
class ReplayReport:
    """What a replay did (or, dry run, would do): lists of ``{"dead_letter": [p, o], "source": [topic, p, o],
    "error_type", ...}``."""
    dry_run: bool
    replayed: list = field(default_factory=list)
    already_replayed: list = field(default_factory=list)
    not_replayable: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def ledger_topic(settings) -> str:
    """The replay ledger's topic name (``<prefix>dead-letter-replays``)."""
    return f"{settings.topic_prefix}{LEDGER_KEY}"


def ensure_ledger_topic(settings, timeout_s: float = 15.0) -> None:
    """Create the ledger topic (1 partition, compacted) if it is missing."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": settings.bootstrap_servers})
    name = ledger_topic(settings)
    if name in admin.list_topics(timeout=timeout_s).topics:
        return
    futures = admin.create_topics([NewTopic(name, 1, settings.replication_factor,
                                            config={"cleanup.policy": "compact"})])
    try:
        futures[name].result(timeout_s)
    except Exception as exc:  # noqa: BLE001 - created meanwhile by another replay
        if "already exists" not in str(exc).lower() and "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise


def _read_all(settings, topic: str, timeout_s: float):
    """(partition, offset, key, value, headers dict) of every record of ``topic`` up to its end now."""
    return [(msg.partition(), msg.offset(), msg.key(), msg.value(),
             {k: (v or b"").decode("utf-8", "replace") for k, v in (msg.headers() or [])})
            for msg in read_messages_to_end(settings, topic, timeout_s=timeout_s)]


def read_dead_letters(settings, *, serde: Serde | None = None, timeout_s: float = 30.0) -> list[DeadLetterRecord]:
    """Every decodable DeadLetter on the dead-letters topic now, in (partition, offset) order."""
    serde = serde or Serde.from_settings(settings)
    records = []
    for p, o, _key, value, headers in _read_all(settings, Topics.from_settings(settings).dead_letters, timeout_s):
        try:
            decoded = serde.decode(value)
        except DecodeError:
            continue
        if decoded.event_type == ev.DEAD_LETTER:
            records.append(DeadLetterRecord(p, o, decoded.value, headers))
    records.sort(key=lambda r: (r.partition, r.offset))
    return records


def read_ledger(settings, timeout_s: float = 30.0) -> dict[str, dict]:
    """{dead letter "partition:offset": ledger entry} of every replay recorded so far."""
    ledger = {}
    for _p, _o, key, value, _headers in _read_all(settings, ledger_topic(settings), timeout_s):
        if key is None or value is None:
            continue
        try:
            ledger[key.decode()] = json.loads(value)
        except ValueError:
            continue
    return ledger


def replay_dead_letters(settings, *, source_topic: str | None = None, error_types=(), partition: int | None = None,
                        from_offset: int | None = None, to_offset: int | None = None, dry_run: bool = False,
                        requested_by: str | None = None, timeout_s: float = 30.0) -> ReplayReport:
    """Produce the original bytes of the matching dead letters to their source topics, once each.

    Filters: ``source_topic`` (a key such as ``feedback`` or a full name), ``error_types`` (any of),
    ``partition`` (source partition), ``from_offset``/``to_offset`` (source offsets, inclusive).
    ``dry_run``: report what would be replayed, send nothing, create nothing. Raises KeyError for an
    unknown ``source_topic``; TimeoutError when the ledger cannot be written (run it again)."""
    topics = Topics.from_settings(settings)
    wanted_topic = None
    if source_topic:
        wanted_topic = source_topic if topics.spec_of(source_topic) is not None else topics.name(source_topic)
    error_types = set(error_types or ())
    ledger = read_ledger(settings, timeout_s)   # {} while the ledger topic does not exist
    report = ReplayReport(dry_run=dry_run)
    candidates = []
    dead_letters = sorted(read_dead_letters(settings, timeout_s=timeout_s),   # replayed in source order
                          key=lambda d: (d.value["source_topic"], d.value["source_partition"], d.value["source_offset"]))
    for dl in dead_letters:
        v = dl.value
        if wanted_topic and v["source_topic"] != wanted_topic:
            continue
        if error_types and v["error_type"] not in error_types:
            continue
        if partition is not None and v["source_partition"] != partition:
            continue
        if from_offset is not None and v["source_offset"] < from_offset:
            continue
        if to_offset is not None and v["source_offset"] > to_offset:
            continue
        item = {"dead_letter": [dl.partition, dl.offset],
                "source": [v["source_topic"], v["source_partition"], v["source_offset"]],
                "error_type": v["error_type"], "reason": v["reason"][:300]}
        if dl.ledger_key in ledger:
            report.already_replayed.append({**item, "replayed_to": ledger[dl.ledger_key].get("replayed_to")})
        elif dl.truncated or v.get("value") is None:
            report.not_replayable.append({**item, "why": "value truncated in the dead letter" if dl.truncated
                                          else "no value"})
        elif topics.spec_of(v["source_topic"]) is None:
            report.not_replayable.append({**item, "why": f"{v['source_topic']} is not a ctloop topic"})
        else:
            candidates.append((dl, item))
    if dry_run or not candidates:
        report.replayed = [item for _dl, item in candidates]
        return report
    try:
        by = requested_by or getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        by = "cli"
    delivered: dict[str, list] = {}

    def on_delivery(err, msg, key):
        if err is None:
            delivered[key] = [msg.partition(), msg.offset()]

    ensure_ledger_topic(settings, timeout_s)
    # a plain producer with delivery reports for every record: where each replay landed goes in the ledger
    producer = Producer(settings.producer_config())
    for dl, _item in candidates:
        v = dl.value
        producer.produce(v["source_topic"], v["value"], v.get("key"), headers=[("ctloop-replay-of", dl.ledger_key.encode())],
                         on_delivery=lambda err, msg, k=dl.ledger_key: on_delivery(err, msg, k))
    producer.flush(timeout_s)
    for dl, item in candidates:
        if dl.ledger_key not in delivered:
            report.not_replayable.append({**item, "why": "not delivered; run the replay again"})
            continue
        entry = {"dead_letter": [dl.partition, dl.offset], "source": item["source"], "error_type": item["error_type"],
                 "replayed_to": delivered[dl.ledger_key], "time_ms": int(time.time() * 1000), "by": by}
        producer.produce(ledger_topic(settings), json.dumps(entry).encode(), dl.ledger_key.encode())
        report.replayed.append({**item, "replayed_to": delivered[dl.ledger_key]})
    if producer.flush(timeout_s):
        raise TimeoutError(f"the replay ledger was not written within {timeout_s}s: run the replay again "
                           "(records replayed meanwhile are recognised by event id)")
    return report
