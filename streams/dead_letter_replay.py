"""Re-injecting dead letters into their source topics once the cause is fixed (``ctloop dead-letters replay``).

Each DeadLetter carries the original key and bytes of a record and its source topic. A replay reads
the dead-letters topic to its end, keeps the dead letters matching the filters (source topic, error
types, source partition, source offset range), and for each one not replayed before produces the
original key and value to the source topic (header ``ctloop-replay-of: <dead-letters partition>:<offset>``),
then records it in the replay ledger.

**The ledger** is the internal compacted topic ``<prefix>dead-letter-replays`` (one partition, so its
offsets order every record). It holds two kinds of JSON records:

* a *completion* per replayed dead letter, keyed ``<dead-letters partition>:<offset>`` (the ledger
  key), value ``{"dead_letter": [partition, offset], "source": [topic, partition, offset], "error_type",
  "replayed_to": [partition, offset], "time_ms", "by", "run"}``. A dead letter with a completion is
  never replayed again.
* a *claim*, keyed ``claim:<ledger key>:<run id>`` (a key of its own per run, so compaction never drops
  one), value ``{"claim": <ledger key>, "run", "over": <offset of the claim it takes over, or null>,
  "time_ms", "by"}``.

**Once, even with two replays at the same time** (a compare-and-set on the log): a run first writes a
claim for each dead letter it means to replay, flushes, reads the ledger to its end and replays only the
dead letters it *won*. The winner of a dead letter is its first claim with ``over`` null (lowest
offset); a later claim takes over only if its ``over`` names the current winner's offset (so of two
runs taking over the same stale claim, the first wins). Then the run records a completion per replayed
record. The replayed record is flushed before its completion is written, so a crash in between may
replay it once more (below): consumers recognise the repeat by event id (the feedback join counts a
feedback event id once; a second prediction with the same id is ignored; the ClickHouse sink keeps one
row per event id).

**A claim without a completion** (the run crashed, or its replay was not delivered) keeps its dead
letter from being replayed by other runs: they list it as "claimed by run R ..., not replayed". Once that
run is known dead, the operator takes it over with ``--reclaim-after SECONDS`` (claims older than that
without a completion are taken over: the dead letter is replayed again, possibly a second time if the
crashed run had sent it; see the event-id deduplication above).

**No endless loop.** Replaying a record whose cause is not fixed dead-letters it again. Such a dead
letter is recognised (its source position is where a completion says a replay landed, or it carries the
header ``ctloop-replay-of``, copied from the replayed record by the component dead-lettering it) and is
skipped and listed as "dead letter of a replayed record" unless ``again`` (``--again``) is given.

Not replayable: dead letters whose value was truncated to fit (``record_too_large`` with header
``ctloop-truncated``) and those without a value: they are reported, never sent.
"""
from __future__ import annotations

import getpass
import json
import time
import uuid
from dataclasses import asdict, dataclass, field

from confluent_kafka import Producer

from streams import catalog as ev
from streams.consumer import read_messages_to_end
from streams.dead_letters import REPLAY_OF_HEADER as REPLAY_HEADER
from streams.kafka_config import client_config, producer_config
from streams.serde import DecodeError, Serde
from streams.topics import Topics, create_topics

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
        """``partition:offset`` of the dead letter on the dead-letters topic (its key in the ledger)."""
        return f"{self.partition}:{self.offset}"

    @property
    def truncated(self) -> bool:
        """True when the dead letter's ``ctloop-truncated`` header says its payload was cut."""
        return self.headers.get("ctloop-truncated") == "true"


@dataclass
class ReplayReport:
    """What a replay did (or, dry run, would do): lists of ``{"dead_letter": [p, o], "source": [topic, p, o],
    "error_type", ...}``; ``run``: this run's id in the ledger's claims (None when it claimed nothing)."""
    dry_run: bool
    replayed: list = field(default_factory=list)
    already_replayed: list = field(default_factory=list)
    not_replayable: list = field(default_factory=list)
    claimed: list = field(default_factory=list)
    """Claimed by another run without a completion (in progress, or crashed: see ``reclaim_after_s``)."""
    of_replayed: list = field(default_factory=list)
    """Dead letters of records that were themselves replays (``replay_of``: the first dead letter's ledger
    key), skipped unless ``again``."""
    run: str | None = None

    def as_dict(self) -> dict:
        """The report as a plain dict (JSON-ready)."""
        return asdict(self)


def ledger_topic(settings) -> str:
    """The replay ledger's topic name (``<prefix>dead-letter-replays``)."""
    return f"{settings.topic_prefix}{LEDGER_KEY}"


def ensure_ledger_topic(settings, timeout_s: float = 15.0) -> None:
    """Create the ledger topic (1 partition, compacted) if it is missing."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_config(settings))
    name = ledger_topic(settings)
    if name in admin.list_topics(timeout=timeout_s).topics:
        return
    create_topics(admin, [NewTopic(name, 1, settings.replication_factor, config={"cleanup.policy": "compact"})],
                  timeout_s)   # created meanwhile by another replay: fine


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


def _ledger_records(settings, timeout_s: float) -> list[tuple[int, str, dict]]:
    """(offset, key, JSON value) of every readable ledger record now, in log order."""
    out = []
    for _p, offset, key, value, _headers in _read_all(settings, ledger_topic(settings), timeout_s):
        if key is None or value is None:
            continue
        try:
            out.append((offset, key.decode(), json.loads(value)))
        except ValueError:
            continue
    return out


@dataclass
class LedgerState:
    """The ledger folded: ``completed`` {ledger key: completion}, ``winners`` {ledger key: the winning
    claim (its value plus ``offset``)} and ``replayed_to`` {(source topic, partition, offset) of a
    replayed record: the ledger key of its dead letter}."""
    completed: dict = field(default_factory=dict)
    winners: dict = field(default_factory=dict)
    replayed_to: dict = field(default_factory=dict)


def read_ledger_state(settings, timeout_s: float = 30.0) -> LedgerState:
    """Completions and winning claims (see the module docstring for the rule) of the ledger now."""
    state = LedgerState()
    for offset, key, value in _ledger_records(settings, timeout_s):
        if key.startswith("claim:"):
            target = value.get("claim")
            if not isinstance(target, str):
                continue
            current = state.winners.get(target)
            over = value.get("over")
            if (current is None and over is None) or (current is not None and over == current["offset"]):
                state.winners[target] = {**value, "offset": offset}
        elif "replayed_to" in value:
            state.completed[key] = value
            source, to = value.get("source"), value.get("replayed_to")
            if source and to:
                state.replayed_to[(source[0], to[0], to[1])] = key
    return state


def read_ledger(settings, timeout_s: float = 30.0) -> dict[str, dict]:
    """{dead letter "partition:offset": ledger entry} of every replay recorded (completed) so far."""
    return read_ledger_state(settings, timeout_s).completed


def _claim_item(claim: dict) -> dict:
    return {"claimed_by_run": claim.get("run"), "claimed_by": claim.get("by"), "claimed_ms": claim.get("time_ms")}


def replay_dead_letters(settings, *, source_topic: str | None = None, error_types=(), partition: int | None = None,
                        from_offset: int | None = None, to_offset: int | None = None, dry_run: bool = False,
                        again: bool = False, reclaim_after_s: float | None = None, requested_by: str | None = None,
                        timeout_s: float = 30.0) -> ReplayReport:
    """Produce the original bytes of the matching dead letters to their source topics, once each, even
    when several replays run at the same time (claims on the ledger: see the module docstring).

    Filters: ``source_topic`` (a key such as ``feedback`` or a full name), ``error_types`` (any of),
    ``partition`` (source partition), ``from_offset``/``to_offset`` (source offsets, inclusive).
    ``dry_run``: report what would be replayed, send nothing, create nothing. ``again``: also replay dead
    letters of records that were themselves replays (skipped by default: the cause was not fixed).
    ``reclaim_after_s``: take over claims of other runs older than this many seconds that have no
    completion (their run crashed). Raises KeyError for an unknown ``source_topic``; TimeoutError when
    the ledger cannot be written or read (run it again)."""
    topics = Topics.from_settings(settings)
    wanted_topic = None
    if source_topic:
        wanted_topic = source_topic if topics.spec_of(source_topic) is not None else topics.name(source_topic)
    error_types = set(error_types or ())
    state = read_ledger_state(settings, timeout_s)   # empty while the ledger topic does not exist
    report = ReplayReport(dry_run=dry_run)
    candidates = []
    now_ms = int(time.time() * 1000)
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
        replay_of = (state.replayed_to.get((v["source_topic"], v["source_partition"], v["source_offset"]))
                     or dl.headers.get(REPLAY_HEADER))
        winner = state.winners.get(dl.ledger_key)
        if dl.ledger_key in state.completed:
            report.already_replayed.append({**item, "replayed_to": state.completed[dl.ledger_key].get("replayed_to")})
        elif replay_of and not again:
            report.of_replayed.append({**item, "replay_of": replay_of})
        elif dl.truncated or v.get("value") is None:
            report.not_replayable.append({**item, "why": "value truncated in the dead letter" if dl.truncated
                                          else "no value"})
        elif topics.spec_of(v["source_topic"]) is None:
            report.not_replayable.append({**item, "why": f"{v['source_topic']} is not a ctloop topic"})
        elif winner is not None and (reclaim_after_s is None
                                     or now_ms - int(winner.get("time_ms") or 0) < reclaim_after_s * 1000):
            report.claimed.append({**item, **_claim_item(winner)})
        else:
            candidates.append((dl, item, None if winner is None else winner["offset"]))
    if dry_run or not candidates:
        report.replayed = [item for _dl, item, _over in candidates]
        return report
    try:
        by = requested_by or getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        by = "cli"
    run = uuid.uuid4().hex[:12]
    report.run = run
    ledger = ledger_topic(settings)
    ensure_ledger_topic(settings, timeout_s)
    # a plain producer with delivery reports for every record: where each replay landed goes in the ledger
    producer = Producer(producer_config(settings))
    claim_errors: list = []
    for dl, _item, over in candidates:
        claim = {"claim": dl.ledger_key, "run": run, "over": over, "time_ms": int(time.time() * 1000), "by": by}
        producer.produce(ledger, json.dumps(claim).encode(), f"claim:{dl.ledger_key}:{run}".encode(),
                         on_delivery=lambda err, _msg: err is not None and claim_errors.append(err))
    if producer.flush(timeout_s) or claim_errors:
        # nothing replayed; a claim that was written makes its dead letter "claimed, not replayed"
        raise TimeoutError(f"the replay's claims were not written within {timeout_s}s ({claim_errors[:1]}): nothing "
                           f"was replayed; run the replay again with --reclaim-after 0 once this run (id {run}) is over")
    won = read_ledger_state(settings, timeout_s)   # the compare-and-set: which claims are first
    mine = []
    for dl, item, _over in candidates:
        winner = won.winners.get(dl.ledger_key)
        if winner is not None and winner.get("run") == run:
            mine.append((dl, item))
        elif dl.ledger_key in won.completed:
            report.already_replayed.append({**item, "replayed_to": won.completed[dl.ledger_key].get("replayed_to")})
        else:
            report.claimed.append({**item, **_claim_item(winner or {})})
    delivered: dict[str, list] = {}

    def on_delivery(err, msg, key):
        if err is None:
            delivered[key] = [msg.partition(), msg.offset()]

    for dl, _item in mine:
        v = dl.value
        producer.produce(v["source_topic"], v["value"], v.get("key"), headers=[(REPLAY_HEADER, dl.ledger_key.encode())],
                         on_delivery=lambda err, msg, k=dl.ledger_key: on_delivery(err, msg, k))
    producer.flush(timeout_s)
    for dl, item in mine:
        if dl.ledger_key not in delivered:
            report.not_replayable.append({**item, "why": f"not delivered (maybe written); claimed by this run ({run}): "
                                                         "replay it with --reclaim-after 0"})
            continue
        entry = {"dead_letter": [dl.partition, dl.offset], "source": item["source"], "error_type": item["error_type"],
                 "replayed_to": delivered[dl.ledger_key], "time_ms": int(time.time() * 1000), "by": by, "run": run}
        producer.produce(ledger, json.dumps(entry).encode(), dl.ledger_key.encode())
        report.replayed.append({**item, "replayed_to": delivered[dl.ledger_key]})
    if producer.flush(timeout_s):
        raise TimeoutError(f"the replay ledger was not written within {timeout_s}s: its dead letters stay claimed by "
                           f"run {run}; replay them with --reclaim-after 0 (records replayed meanwhile are "
                           "recognised by event id)")
    return report
