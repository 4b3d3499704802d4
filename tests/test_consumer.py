"""The typed consumer over a real broker: dead letters with reason and source coordinates,
at-least-once delivery (a consumer that dies before committing leaves its records to the next one),
and reading a topic to its end."""
from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fastavro
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streams import catalog as ev
from streams.catalog import EventSchema, default_catalog
from streams.consumer import EventConsumer, end_offsets, read_to_end
from streams.sdk import CtloopClient
from streams.serde import SINGLE_OBJECT_MAGIC, Serde, new_event

ROOT = Path(__file__).resolve().parent.parent


def prediction(**overrides) -> dict:
    fields = dict(prediction_id="p", deployment="d", model_name="m", model_version="1", role="primary",
                  features={"x": 1.0}, label="a")
    fields.update(overrides)
    return new_event(ev.PREDICTION_LOGGED, **fields)


def foreign_bytes(schema: EventSchema | dict, record: dict) -> bytes:
    """Single-object encoding written without ctloop (as another team's producer would)."""
    definition = schema.definition if isinstance(schema, EventSchema) else schema
    parsed = fastavro.parse_schema(json.loads(json.dumps(definition)))
    from fastavro.schema import fingerprint, to_parsing_canonical_form

    body = io.BytesIO()
    fastavro.schemaless_writer(body, parsed, record)
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
    return SINGLE_OBJECT_MAGIC + fp + body.getvalue()


def raw_producer(settings) -> Producer:
    return Producer({"bootstrap.servers": settings.bootstrap_servers, "linger.ms": 0})


def poll_until(consumer: EventConsumer, condition, timeout_s: float = 30.0) -> list:
    events = []
    deadline = time.monotonic() + timeout_s
    while not condition(events):
        assert time.monotonic() < deadline, f"condition not met within {timeout_s}s: {len(events)} events, " \
                                            f"{consumer.dead_lettered} dead letters"
        events.extend(consumer.poll_batch(500, 0.2))
    return events


def read_raw(settings, topic: str, n: int, timeout_s: float = 20.0) -> list:
    c = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "raw-reader", "enable.auto.commit": False})
    try:
        md = c.list_topics(topic, timeout=10)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.topics[topic].partitions])
        msgs, deadline = [], time.monotonic() + timeout_s
        while len(msgs) < n:
            assert time.monotonic() < deadline, f"{len(msgs)} of {n} records on {topic}"
            msgs.extend(m for m in c.consume(100, 0.2) if not m.error())
        return msgs
    finally:
        c.close()


def test_invalid_records_are_dead_lettered_with_reason_and_source(settings, topics):
    serde = Serde()
    # a valid event of a schema ctloop does not know: PredictionLogged with an extra field
    unknown_schema = json.loads(json.dumps(default_catalog()[ev.PREDICTION_LOGGED].definition))
    unknown_schema["fields"].append({"name": "tenant", "type": "string"})
    bad = [
        (b"\xde\xad\xbe\xef garbage", "undecodable", "framing"),
        (foreign_bytes(unknown_schema, {**prediction(), "tenant": "acme"}), "unknown_schema", "fingerprint"),
        (foreign_bytes(default_catalog()[ev.PREDICTION_LOGGED], prediction(features={"x": math.nan})), "invalid",
         "features['x']"),
        (serde.encode(ev.FEEDBACK_RECEIVED, new_event(ev.FEEDBACK_RECEIVED, prediction_id="p", deployment="d",
                                                      feedback_type="label", kind="explicit", label="a")),
         "unexpected_type", "FeedbackReceived"),
    ]
    good = [serde.encode(ev.PREDICTION_LOGGED, prediction(prediction_id=f"ok{i}")) for i in range(2)]
    producer = raw_producer(settings)
    sequence = [good[0]] + [b for b, _, _ in bad] + [good[1]]
    for i, value in enumerate(sequence):
        producer.produce(topics.predictions, value, key=f"key{i}".encode(), partition=0)
    assert producer.flush(10) == 0

    with EventConsumer(settings, settings.topic_prefix + "dlq-test", [topics.predictions], component="test") as consumer:
        events = poll_until(consumer, lambda evs: len(evs) == 2 and consumer.dead_lettered == 4)
        assert [e.value["prediction_id"] for e in events] == ["ok0", "ok1"]
        assert [e.offset for e in events] == [0, 5]
        consumer.commit()

    letters = read_raw(settings, topics.dead_letters, 4)
    letters.sort(key=lambda m: int(dict(m.headers())["ctloop-source-offset"]))
    for offset, (msg, (original, error_type, words)) in enumerate(zip(letters, bad), start=1):
        headers = dict(msg.headers())
        assert headers["ctloop-error-type"] == error_type.encode()
        assert words.encode() in headers["ctloop-reason"]
        assert headers["ctloop-source-topic"] == topics.predictions.encode()
        assert headers["ctloop-source-partition"] == b"0"
        assert headers["ctloop-source-offset"] == str(offset).encode()
        assert msg.key() == f"key{offset}".encode()
        letter = serde.decode(msg.value())
        assert letter.event_type == ev.DEAD_LETTER
        v = letter.value
        assert (v["source_topic"], v["source_partition"], v["source_offset"]) == (topics.predictions, 0, offset)
        assert v["value"] == original and v["key"] == f"key{offset}".encode()
        assert v["error_type"] == error_type and words in v["reason"] and v["component"] == "test"


def test_handler_errors_are_dead_lettered_and_the_rest_committed(settings, topics):
    with CtloopClient(settings) as client:
        for i in range(10):
            client.log_prediction("d", {"x": float(i)}, label="a", model_version="1")
    seen = []

    def handler(event):
        if event.value["features"]["x"] == 3.0:
            raise RuntimeError("boom")
        seen.append(event.value["features"]["x"])

    group = settings.topic_prefix + "handler"
    with EventConsumer(settings, group, [topics.predictions]) as consumer:
        deadline = time.monotonic() + 30
        consumer.run(handler, stop=lambda: len(seen) + consumer.dead_lettered >= 10 or time.monotonic() > deadline)
        assert consumer.dead_lettered == 1 and sorted(seen) == [float(i) for i in range(10) if i != 3]
    letter = Serde().decode(read_raw(settings, topics.dead_letters, 1)[0].value()).value
    assert letter["error_type"] == "processing_error" and "boom" in letter["reason"]
    # everything was committed: a new member of the group only sees what comes next
    with CtloopClient(settings) as client:
        client.log_prediction("d", {"x": 99.0}, label="a", model_version="1")
    with EventConsumer(settings, group, [topics.predictions]) as consumer:
        events = poll_until(consumer, lambda evs: len(evs) >= 1)
        time_limit = time.monotonic() + 1.0
        while time.monotonic() < time_limit:  # anything redelivered would arrive together with it
            events.extend(consumer.poll_batch(500, 0.2))
        assert [e.value["features"]["x"] for e in events] == [99.0]


def test_oversized_records_and_writes_get_one_fitting_dead_letter_each(settings, topics):
    """EventConsumer (trainers, sink) under a small limit: a record over it is dead-lettered (truncated,
    record_too_large) and one whose handler's write is over it too (RecordTooLarge from the producer);
    both are committed and the next record is handled. Refused records of a topic the consumer does not
    own are skipped, not dead-lettered."""
    from streams.producer import EventProducer
    from streams.record_size import RECORD_OVERHEAD_BYTES

    small = settings.replace(max_message_bytes=20_000)
    serde = Serde()
    producer = raw_producer(settings)
    producer.produce(topics.predictions, b"\x00" + b"g" * 30_000, b"huge")                  # over the limit
    wide = serde.encode(ev.PREDICTION_LOGGED, prediction(prediction_id="wide", features={"x": 1.0}))
    producer.produce(topics.predictions, wide, b"wide")
    producer.produce(topics.predictions, serde.encode(ev.PREDICTION_LOGGED, prediction(prediction_id="ok")), b"ok")
    producer.produce(topics.feedback, b"junk", b"not-mine")                                  # not owned: skipped
    assert producer.flush(10) == 0
    handled = []
    group = settings.topic_prefix + "small"
    with EventProducer(small) as out, EventConsumer(small, group, [topics.predictions, topics.feedback],
                                                     dead_letter_topics=[topics.predictions]) as consumer:
        def handler(event):
            if event.value["prediction_id"] == "wide":   # an output over the limit
                out.produce_raw(topics.labeled_examples, b"o" * 25_000, b"wide")
            handled.append(event.value["prediction_id"])

        deadline = time.monotonic() + 30
        consumer.run(handler, stop=lambda: "ok" in handled and consumer.dead_lettered == 2 and consumer.skipped == 1
                     or time.monotonic() > deadline)
        assert (consumer.dead_lettered, consumer.skipped, handled) == (2, 1, ["ok"])
    letters = {m.key(): (m, serde.decode(m.value()).value) for m in read_raw(settings, topics.dead_letters, 2)}
    msg, huge = letters[b"huge"]
    assert huge["error_type"] == "record_too_large" and dict(msg.headers())["ctloop-truncated"] == b"true"
    assert len(msg.value()) + RECORD_OVERHEAD_BYTES <= 20_000 and huge["source_topic"] == topics.predictions
    _, wide_letter = letters[b"wide"]
    assert wide_letter["error_type"] == "record_too_large" and "is 25004 bytes" in wide_letter["reason"]
    assert wide_letter["value"] == wide                                                       # fits: whole


CRASHING_CONSUMER = """
import sys
from infra.settings import Settings
from streams.consumer import EventConsumer
settings = Settings.from_env()
consumer = EventConsumer(settings, sys.argv[1], [sys.argv[2]])
got = 0
while got < int(sys.argv[3]):
    got += len(consumer.poll_batch(500, 0.2))
print("GOT", got, flush=True)
sys.stdin.read()  # wait to be killed: never commits
"""


def test_a_consumer_that_dies_before_committing_leaves_its_records_to_the_group(settings, topics):
    n = 50
    with CtloopClient(settings) as client:
        for i in range(n):
            client.log_prediction("d", {"x": float(i)}, label="a", model_version="1")
    group = settings.topic_prefix + "crash"
    env = {**os.environ, "CTLOOP_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "CTLOOP_TOPIC_PREFIX": settings.topic_prefix, "PYTHONPATH": str(ROOT),
           "CTLOOP_SESSION_TIMEOUT_MS": "2000", "CTLOOP_HEARTBEAT_INTERVAL_MS": "300"}  # the group notices the death sooner
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_CONSUMER, group, topics.predictions, str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        line = _readline(proc, timeout_s=60)
        assert line.strip() == f"GOT {n}"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with EventConsumer(settings, group, [topics.predictions]) as consumer:
        events = poll_until(consumer, lambda evs: len(evs) >= n, timeout_s=60)
        assert sorted(e.value["features"]["x"] for e in events) == [float(i) for i in range(n)]


def _readline(proc: subprocess.Popen, timeout_s: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout_s):
        raise TimeoutError(f"no output from the consumer process within {timeout_s}s")
    return proc.stdout.readline().decode()


def test_read_to_end_and_end_offsets_see_every_batched_record(settings, topics):
    """Tansu reports the high watermark of a batched partition as the last batch's base offset + 1;
    end_offsets/read_to_end must not stop there."""
    with CtloopClient(settings) as client:
        for i in range(300):
            client.log_prediction("d", {"x": float(i)}, label="a", model_version="1")
    ends = end_offsets(settings, topics.predictions)
    assert set(ends) == set(range(settings.default_partitions)) and sum(ends.values()) == 300
    events = read_to_end(settings, topics.predictions, timeout_s=20)
    assert sorted(e.value["features"]["x"] for e in events) == [float(i) for i in range(300)]
    assert end_offsets(settings, topics.feedback) == {p: 0 for p in range(settings.default_partitions)}
    assert read_to_end(settings, topics.feedback, timeout_s=5) == []
    assert end_offsets(settings, settings.topic_prefix + "no-such-topic") == {}
