"""Oversized and bad records on the real broker with a real worker running every stage (three of them
read predictions and two feedback: feedback join, drift, shadow comparison; labeled examples are read by
drift and triggers): the worker keeps running, each bad record gets exactly one dead letter (record_too_large ones fit, with the original size and sha256), fresh pairs are joined
afterwards, and a restart dead-letters nothing again.

The embedded Tansu broker enforces no record size limit (it took a 20 MB record when this was written),
so the limit that matters is the producers' own (``Settings.max_message_bytes``, 1 MB by default, the
issue's examples are at that scale)."""
from __future__ import annotations

import hashlib
import uuid

import pytest
from confluent_kafka import Producer

from streams import catalog as ev
from streams.dead_letters import publish_dead_letter
from streams.producer import EventProducer
from streams.record_size import RECORD_OVERHEAD_BYTES, RecordTooLarge
from streams.sdk import CtloopClient
from streams.serde import Serde, new_event
from tests.helpers.collect import Collector
from tests.helpers.processes import running_processors

STAGES = ""   # every stage of processors.app.STAGES


def _raw_producer(settings) -> Producer:
    """A producer without ctloop's limit: stands for a foreign or misconfigured client."""
    return Producer({"bootstrap.servers": settings.bootstrap_servers, "message.max.bytes": 20_000_000,
                     "linger.ms": 0})


def _prediction(pid: str, dep: str, features: dict, role: str = "primary") -> dict:
    return new_event(ev.PREDICTION_LOGGED, prediction_id=pid, deployment=dep, model_name="m", model_version="1", role=role,
                     features=features, label="a")


def _feedback(pid: str, dep: str, label: str) -> dict:
    return new_event(ev.FEEDBACK_RECEIVED, prediction_id=pid, deployment=dep, feedback_type="label", kind="explicit",
                     label=label)


def _headers(collector, event) -> dict:
    """The ctloop-* headers of a collected event."""
    (msg,) = [m for m in collector.raw if (m.topic(), m.partition(), m.offset()) ==
              (event.topic, event.partition, event.offset)]
    return {k: v.decode() for k, v in (msg.headers() or [])}


@pytest.mark.slow
def test_oversized_and_bad_records_get_one_dead_letter_each_and_the_worker_keeps_joining(settings, topics):
    dep = "big-dep"
    serde = Serde.from_settings(settings)
    limit = settings.max_message_bytes
    with CtloopClient(settings) as client:
        client.setup_feedback_loop(dep, model_name="m")
    raw = _raw_producer(settings)
    with Collector(settings, topics.labeled_examples, topics.dead_letters) as out:
        with running_processors(settings, stages=STAGES, timeout_s=90) as proc, CtloopClient(settings) as client:
            sent = {}   # what -> (topic, key, value)

            def send(what, topic, key, value):
                sent[what] = (topic, key, value)
                raw.produce(topic, value, key)

            # 1. a normal prediction, then feedback for it with a 1.5 MB label (over the limit as a record)
            p1 = client.log_prediction(dep, {"x": 1.0}, label="a", model_version="1")
            client.flush()
            send("label_1_5mb", topics.feedback, p1,
                 serde.encode(ev.FEEDBACK_RECEIVED, _feedback(p1, dep, "L" * 1_500_000), topics.feedback))
            # 2. a 6 MB undecodable value on predictions
            send("undecodable_6mb", topics.predictions, b"six-mb", b"\x00garbage" + b"g" * 6_000_000)
            # 3. a prediction well under the limit (~0.7 MB) whose join row (JSON, ~1.65x) is over it
            wide_pid = str(uuid.uuid4())
            wide = {f"f{i:05d}": 0.123456789 + i for i in range(45_000)}
            wide_value = serde.encode(ev.PREDICTION_LOGGED, _prediction(wide_pid, dep, wide), topics.predictions)
            assert len(wide_value) < limit - RECORD_OVERHEAD_BYTES
            send("wide_prediction", topics.predictions, wide_pid, wide_value)
            # 4. a small undecodable prediction: one dead letter, though three stages read the topic
            send("garbage", topics.predictions, b"garbage", b"not avro")
            send("garbage_feedback", topics.feedback, b"garbage-fb", b"not avro either")
            send("garbage_example", topics.labeled_examples, b"garbage-ex", b"\x00\x00\x00\x00\x07")
            # 5. a shadow-role prediction on predictions: invalid once; its feedback says why it is unmatched
            shadow_pid = str(uuid.uuid4())
            send("shadow_role", topics.predictions, shadow_pid,
                 serde.encode(ev.PREDICTION_LOGGED, _prediction(shadow_pid, dep, {"x": 2.0}, role="shadow"),
                              topics.predictions))
            raw.flush(30)
            client.log_feedback(shadow_pid, dep, label="a")
            # 6. a fresh pair afterwards is joined
            p2 = client.log_prediction(dep, {"x": 3.0}, label="a", model_version="1")
            client.log_feedback(p2, dep, label="b")
            client.flush()

            out.wait(lambda c: c.of(ev.LABELED_EXAMPLE, prediction_id=p2), 60, "the fresh pair joined")
            try:
                dls = out.wait(lambda c: len(c.of(ev.DEAD_LETTER)) >= 8 and c.of(ev.DEAD_LETTER), 60, "eight dead letters")
            except TimeoutError:
                print([(d.key[:40], d.value["error_type"], d.value["reason"][:200]) for d in out.of(ev.DEAD_LETTER)])
                print(open(proc.log_path).read()[-6000:])
                raise
            assert proc.poll() is None, "the worker must keep running"

            coords = [(d.value["source_topic"], d.value["source_partition"], d.value["source_offset"]) for d in dls]
            assert len(coords) == len(set(coords)) == 8, [(d.value["error_type"], d.value["component"]) for d in dls]
            by_key = {d.key: d for d in dls if d.value["error_type"] != "unmatched_feedback"}
            for what, key, error_type in (("label_1_5mb", p1.encode(), "record_too_large"),
                                          ("undecodable_6mb", b"six-mb", "record_too_large"),
                                          ("wide_prediction", wide_pid.encode(), "record_too_large"),
                                          ("garbage", b"garbage", "undecodable"),
                                          ("garbage_feedback", b"garbage-fb", "undecodable"),
                                          ("garbage_example", b"garbage-ex", "unknown_schema"),
                                          ("shadow_role", shadow_pid.encode(), "invalid")):
                d = by_key[key]
                assert d.value["error_type"] == error_type, (what, d.value["reason"])
                owner = "processors.drift" if what == "garbage_example" else "processors.feedback_join"
                assert d.value["component"] == owner, what
                assert d.value["source_topic"] == sent[what][0]
                original = sent[what][2]
                if error_type == "record_too_large":
                    headers = _headers(out, d)
                    assert headers["ctloop-original-size"] == str(len(original)), what
                    assert headers["ctloop-original-sha256"] == hashlib.sha256(original).hexdigest(), what
                    assert str(len(original)) in d.value["reason"]
                    assert original.startswith(d.value["value"])         # truncated, or whole when it fits
                    assert len(d.value["value"]) < limit
                else:
                    assert d.value["value"] == original
            assert by_key[b"six-mb"].value["value"] != sent["undecodable_6mb"][2]        # truncated
            assert by_key[wide_pid.encode()].value["value"] == wide_value               # fits whole
            assert "row" in by_key[wide_pid.encode()].value["reason"]
            unmatched = [d for d in dls if d.value["error_type"] == "unmatched_feedback"]
            assert [d.key.decode() for d in unmatched] == [shadow_pid]
            assert "dead-lettered" in unmatched[0].value["reason"] and "role" in unmatched[0].value["reason"]
            assert not out.of(ev.LABELED_EXAMPLE, prediction_id=p1)
            assert not out.of(ev.LABELED_EXAMPLE, prediction_id=wide_pid)

        # after a restart: nothing is dead-lettered again, and new pairs are joined
        with running_processors(settings, stages=STAGES, timeout_s=90) as proc, CtloopClient(settings) as client:
            p3 = client.log_prediction(dep, {"x": 4.0}, label="a", model_version="1")
            client.log_feedback(p3, dep, label="a")
            client.flush()
            out.wait(lambda c: c.of(ev.LABELED_EXAMPLE, prediction_id=p3), 120, "a pair joined after the restart")
            assert proc.poll() is None
        assert len(out.of(ev.DEAD_LETTER)) == 8


def test_a_dead_letter_always_fits_and_a_producer_refuses_oversized_records(settings, topics):
    small = settings.replace(max_message_bytes=20_000)
    with EventProducer(small) as producer:
        try:
            producer.produce_raw(topics.predictions, b"x" * 30_000, "k")
        except RecordTooLarge as exc:
            assert topics.predictions in str(exc) and "30001" in str(exc)
        else:
            raise AssertionError("a 30 kB record must be refused under a 20 kB limit")
        value = b"v" * 50_000
        sent = publish_dead_letter(producer, topics, topic=topics.feedback, partition=1, offset=7, key=b"k", value=value,
                                   reason="undecodable thing", error_type="undecodable", component="test")
        assert sent == "record_too_large"
        producer.flush()
    with Collector(settings, topics.dead_letters) as out:
        (d,) = out.wait(lambda c: c.of(ev.DEAD_LETTER), 30, "the dead letter")
        headers = _headers(out, d)
        assert headers["ctloop-original-size"] == "50000" and headers["ctloop-truncated"] == "true"
        assert headers["ctloop-original-sha256"] == hashlib.sha256(value).hexdigest()
        assert "undecodable" in d.value["reason"] and d.value["error_type"] == "record_too_large"
        assert 0 < len(d.value["value"]) < 20_000 and value.startswith(d.value["value"])
        assert len(out.raw[0].value()) + RECORD_OVERHEAD_BYTES <= 20_000
