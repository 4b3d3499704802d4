"""The app SDK over a real broker: nothing lost, keys and partitions right, invalid input refused at
the call naming the field, delivery failures surfaced, back-pressure instead of unbounded memory."""
from __future__ import annotations

import math
import time
import zlib
from collections import Counter

import pytest

from streams import catalog as ev
from streams.consumer import EventConsumer, read_to_end
from streams.producer import BackPressureTimeout, DeliveryError, EventProducer
from streams.sdk import CtloopClient
from streams.validation import InvalidEvent

FEATURES = {f"f{i}": float(i) / 7 for i in range(20)}
# Nothing listens on port 1, and it is outside the ephemeral range (no TCP self-connect).
DEAD_BROKER = "127.0.0.1:1"


def consume_all(settings, topic: str, n: int, timeout_s: float = 60.0, group: str = "sdk-test"):
    """Consume with the typed consumer until ``n`` events arrived (deadline)."""
    events = []
    with EventConsumer(settings, settings.topic_prefix + group, [topic]) as consumer:
        deadline = time.monotonic() + timeout_s
        while len(events) < n:
            assert time.monotonic() < deadline, f"only {len(events)} of {n} events within {timeout_s}s"
            events.extend(consumer.poll_batch(5000, 0.5))
        consumer.commit()
        assert consumer.dead_lettered == 0
    return events


@pytest.mark.slow
def test_produce_n_consume_n_none_lost(settings, topics):
    n = 20_000
    ids = []
    t0 = time.perf_counter()
    with CtloopClient(settings) as client:
        for i in range(n):
            ids.append(client.log_prediction("fraud", FEATURES, label="ok" if i % 3 else "fraud",
                                             probabilities={"ok": 0.75, "fraud": 0.25}, model_version="3",
                                             model_name="mlp", latency_ms=1.5))
    produce_s = time.perf_counter() - t0
    assert len(set(ids)) == n
    events = consume_all(settings, topics.predictions, n)
    assert len(events) == n, "duplicates"
    assert {e.value["prediction_id"] for e in events} == set(ids)
    for e in events[:50]:
        assert e.event_type == ev.PREDICTION_LOGGED
        assert e.key == e.value["prediction_id"].encode()
        assert e.value["features"] == FEATURES and e.value["model_version"] == "3"
        assert e.value["role"] == "primary" and e.value["probabilities"] == {"ok": 0.75, "fraud": 0.25}
    # keyed by prediction id over every partition; the partition is a function of the key
    # (librdkafka's default: CRC32), so another producer with the same partitioner co-partitions
    assert Counter(e.partition for e in events).keys() == set(range(settings.default_partitions))
    for e in events[:500]:
        assert e.partition == zlib.crc32(e.key) % settings.default_partitions, e.key
    assert produce_s < 30, f"SDK produced {n} events in {produce_s:.1f}s"


def test_predictions_shadow_and_feedback_are_co_partitioned(settings, topics):
    with CtloopClient(settings) as client:
        ids = [client.log_prediction("d", {"x": float(i)}, label="a", model_version="1") for i in range(200)]
        for pid in ids:
            client.log_prediction("d", {"x": 1.0}, label="b", model_version="2", role="shadow", prediction_id=pid)
            client.log_feedback(pid, "d", label="a")
    by_topic = {}
    for key in ("predictions", "shadow-predictions", "feedback"):
        events = read_to_end(settings, topics.name(key), timeout_s=20)
        assert len(events) == 200
        by_topic[key] = {e.value["prediction_id"]: e.partition for e in events}
    assert by_topic["predictions"] == by_topic["shadow-predictions"] == by_topic["feedback"]
    shadow = read_to_end(settings, topics.shadow_predictions, timeout_s=20)
    assert {e.value["role"] for e in shadow} == {"shadow"} and {e.value["model_version"] for e in shadow} == {"2"}


def test_murmur2_partitioner_matches_java_clients(settings, topics):
    """CTLOOP_PRODUCER_PARTITIONER=murmur2_random: the partition Kafka's Java client (and aiokafka,
    faust's client) picks for the same key, for loops where other-language producers write too."""
    from aiokafka.partitioner import DefaultPartitioner  # an independent murmur2

    with CtloopClient(settings.replace(producer_partitioner="murmur2_random")) as client:
        for i in range(300):
            client.log_prediction("d", {"x": float(i)}, label="a", model_version="1")
    events = read_to_end(settings, topics.predictions, timeout_s=20)
    parts = list(range(settings.default_partitions))
    assert len(events) == 300
    assert all(e.partition == DefaultPartitioner()(e.key, parts, parts) for e in events)
    assert any(e.partition != zlib.crc32(e.key) % len(parts) for e in events)


def test_feedback_kinds_round_trip(settings, topics):
    with CtloopClient(settings) as client:
        client.log_feedback("p1", "d", label="spam")
        client.log_feedback("p2", "d", label="ham", feedback_type="correction", kind="implicit")
        client.log_feedback("p3", "d", feedback_type="review", verdict="incorrect", label="spam", reviewer="ann")
    events = {e.value["prediction_id"]: e.value for e in read_to_end(settings, topics.feedback, timeout_s=20)}
    assert events["p1"]["feedback_type"] == "label" and events["p1"]["kind"] == "explicit"
    assert events["p2"]["feedback_type"] == "correction" and events["p2"]["kind"] == "implicit"
    assert (events["p3"]["verdict"], events["p3"]["reviewer"], events["p3"]["label"]) == ("incorrect", "ann", "spam")


def test_close_flushes(settings, topics):
    client = CtloopClient(settings, producer=None)
    client.log_prediction("d", {"x": 1.0}, score=0.5, model_version="1")
    client.close()
    events = read_to_end(settings, topics.predictions, timeout_s=20)
    assert [e.value["score"] for e in events] == [0.5]
    with pytest.raises(RuntimeError, match="closed"):
        client.log_prediction("d", {"x": 1.0}, score=0.5, model_version="1")


# -- refusal of invalid input at the call ------------------------------------------------------------------
GOOD = dict(deployment="d", features={"x": 1.0}, label="a", model_version="1")
BAD_PREDICTIONS = [
    ("deployment", dict(deployment="")),
    ("deployment", dict(deployment=None)),
    ("model_version", dict(model_version=3)),
    ("role", dict(role="boss")),
    ("features", dict(features={})),
    ("features", dict(features=[1.0, 2.0])),
    ("features['x']", dict(features={"x": math.nan})),
    ("features['x']", dict(features={"x": math.inf})),
    ("features['x']", dict(features={"x": -math.inf})),
    ("features['x']", dict(features={"x": "1.0"})),
    ("features['x']", dict(features={"x": True})),
    ("features", dict(features={3: 1.0})),
    ("label", dict(label=None)),
    ("label", dict(label=7)),
    ("score", dict(label=None, score=math.nan)),
    ("score", dict(label=None, score="0.5")),
    ("probabilities['a']", dict(probabilities={"a": 1.5})),
    ("probabilities['a']", dict(probabilities={"a": math.nan})),
    ("latency_ms", dict(latency_ms="fast")),
    # numbers finite in float64 but not in float32, which the models compute in (issue 11)
    ("features['x']", dict(features={"x": 1e39})),
    ("features['x']", dict(features={"x": -1e39})),
    ("features['x']", dict(features={"x": 10**39})),
    ("features['y']", dict(features={"x": 1.0, "y": 3.5e38})),
    ("score", dict(label=None, score=1e39)),
    ("latency_ms", dict(latency_ms=1e39)),
    # strings that are not UTF-8 encodable: lone surrogates, as surrogateescape decoding produces
    ("deployment", dict(deployment="fraud\udcff")),
    ("model_version", dict(model_version="1\ud800")),
    ("model_name", dict(model_name="\udcff")),
    ("label", dict(label="ok\udcff")),
    ("prediction_id", dict(prediction_id="p\udcff")),
    ("features", dict(features={"amount\udcff": 1.0})),
    ("probabilities", dict(probabilities={"\udcff": 0.5})),
    # a client clock outside the bound (event_time_max_past_s / event_time_max_future_s) around the SDK's
    ("event_time", dict(event_time=1)),
    ("event_time", dict(event_time=time.time_ns() // 1_000_000 - 2 * 86400_000)),
    ("event_time", dict(event_time=time.time_ns() // 1_000_000 + 3600_000)),
    ("event_time", dict(event_time=1.5e12)),
    ("event_time", dict(event_time=True)),
]


@pytest.mark.parametrize("speedups", [True, False], ids=["c-encoder", "python"])
@pytest.mark.parametrize("field, change", BAD_PREDICTIONS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_PREDICTIONS)])
def test_invalid_prediction_is_refused_naming_the_field(settings, field, change, speedups):
    with CtloopClient(settings.replace(sdk_speedups=speedups)) as client:
        kwargs = {**GOOD, **change}
        deployment, features = kwargs.pop("deployment"), kwargs.pop("features")
        with pytest.raises(InvalidEvent) as err:
            client.log_prediction(deployment, features, **kwargs)
        assert err.value.field == field
        assert field in str(err.value)
        assert len(client.producer) == 0, "nothing was queued"


@pytest.mark.parametrize("speedups", [True, False], ids=["c-encoder", "python"])
def test_values_at_the_edge_of_the_bounds_are_accepted(settings, topics, speedups):
    """The largest float32 and the ends of the event_time bound pass; event_time_max_past_s=0 lets a
    backfill through. What was logged is what is read back."""
    from streams.validation import FLOAT32_MAX

    now = time.time_ns() // 1_000_000
    with CtloopClient(settings.replace(sdk_speedups=speedups)) as client:
        client.log_prediction("d", {"x": FLOAT32_MAX, "y": -FLOAT32_MAX, "z": 10**38}, label="\u00e9t\u00e9",
                              score=-FLOAT32_MAX, model_version="1", event_time=now - 86000_000)
        client.log_prediction("d", {"x": 1.0}, label="a", model_version="1", event_time=now + 290_000)
        client.log_feedback("p", "d", label="a", event_time=now - 86000_000)
    with CtloopClient(settings.replace(sdk_speedups=speedups, event_time_max_past_s=0)) as backfill:
        backfill.log_prediction("d", {"x": 1.0}, label="a", model_version="1", event_time=1_000_000)
    # consumers compare event_time with the record's timestamp: a backfill needs the bound off there too
    events = consume_all(settings.replace(event_time_max_past_s=0), topics.predictions, 3)
    by_time = sorted(events, key=lambda e: e.value["event_time"])
    assert [e.value["event_time"] for e in by_time] == [1_000_000, now - 86000_000, now + 290_000]
    assert by_time[1].value["features"] == {"x": FLOAT32_MAX, "y": -FLOAT32_MAX, "z": 1e38}
    assert by_time[1].value["label"] == "\u00e9t\u00e9"


SETTINGS_CALLS = [
    ("deployment", "setup_feedback_loop", ("fraud\udcff",), {}),
    ("model_name", "setup_feedback_loop", ("fraud",), {"model_name": "mlp\udcff"}),
    ("model_factory", "setup_feedback_loop", ("fraud",), {"model_factory": "pkg:make\udcff"}),
    ("dataset_version", "attach_dataset_version", ("fraud", "/data/\udcffbase.csv"), {}),
    ("shadow_model_version", "set_shadow_model", ("fraud", "2\udcff"), {}),
    ("deployment", "toggle_continuous_training", ("\ud800", True), {}),
]


@pytest.mark.parametrize("field, operation, args, kwargs", SETTINGS_CALLS, ids=[c[1] + "-" + c[0] for c in SETTINGS_CALLS])
def test_settings_operation_refuses_a_string_that_is_not_utf8(settings, topics, field, operation, args, kwargs):
    with CtloopClient(settings) as client:
        with pytest.raises(InvalidEvent) as err:
            getattr(client, operation)(*args, **kwargs)
        assert err.value.field == field
        assert len(client.producer) == 0


def test_missing_required_argument_is_refused(settings):
    with CtloopClient(settings) as client:
        with pytest.raises(TypeError, match="model_version"):
            client.log_prediction("d", {"x": 1.0}, label="a")


BAD_FEEDBACK = [
    ("prediction_id", dict(prediction_id="")),
    ("deployment", dict(deployment=5)),
    ("feedback_type", dict(feedback_type="opinion")),
    ("kind", dict(kind="telepathic")),
    ("label", dict(label=None)),
    ("verdict", dict(verdict="correct")),
    ("verdict", dict(feedback_type="review", verdict="maybe")),
    ("verdict", dict(feedback_type="review", verdict=None)),
    ("reviewer", dict(reviewer=3)),
    ("label", dict(label="fraud\udcff")),
    ("reviewer", dict(reviewer="ann\udcff")),
    ("deployment", dict(deployment="\ud800")),
    ("prediction_id", dict(prediction_id="p\udcff")),
    ("label", dict(feedback_type="review", verdict="incorrect", label="\udcff")),
    ("event_time", dict(event_time=1)),
    ("event_time", dict(event_time=time.time_ns() // 1_000_000 + 3600_000)),
]


@pytest.mark.parametrize("field, change", BAD_FEEDBACK, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_FEEDBACK)])
def test_invalid_feedback_is_refused_naming_the_field(settings, field, change):
    with CtloopClient(settings) as client:
        kwargs = {"prediction_id": "p", "deployment": "d", "label": "a", **change}
        with pytest.raises(InvalidEvent) as err:
            client.log_feedback(kwargs.pop("prediction_id"), kwargs.pop("deployment"), **kwargs)
        assert err.value.field == field


# -- delivery failures and back-pressure ----------------------------------------------------------------------
def test_delivery_failure_is_raised_at_flush(settings):
    dead = settings.replace(bootstrap_servers=DEAD_BROKER)
    producer = EventProducer(dead, **{"message.timeout.ms": 500, "log_level": 0})
    client = CtloopClient(dead, producer=producer)
    assert client.producer is producer and client.serde is producer.serde  # an idle producer is still used
    for _ in range(3):
        client.log_prediction("d", {"x": 1.0}, label="a", model_version="1")  # does not block
    t0 = time.monotonic()
    with pytest.raises(DeliveryError) as err:
        client.flush(timeout_s=10)
    assert err.value.count == 3 and "timed out" in str(err.value).lower()
    assert time.monotonic() - t0 < 10
    client.flush(timeout_s=1)  # failures are reported once
    producer.close(1)


def test_back_pressure_blocks_then_continues_with_bounded_memory(settings, topics):
    small = settings.replace(producer_queue_max_messages=20, producer_linger_ms=1)
    n, peak = 3000, 0
    with CtloopClient(small) as client:
        for i in range(n):
            client.log_prediction("d", {"x": float(i)}, label="a", model_version="1")
            peak = max(peak, len(client.producer))
        assert client.producer.delivered > 0
    assert peak <= 20 + 8, f"buffer grew to {peak}"  # len() also counts a few in-flight protocol requests
    events = read_to_end(settings, topics.predictions, timeout_s=30)
    assert sorted(e.value["features"]["x"] for e in events) == [float(i) for i in range(n)]


def test_back_pressure_times_out_when_the_broker_is_unreachable(settings):
    dead = settings.replace(bootstrap_servers=DEAD_BROKER, producer_queue_max_messages=5,
                            producer_block_timeout_s=0.5)
    producer = EventProducer(dead, **{"log_level": 0})
    client = CtloopClient(dead, producer=producer)
    for _ in range(5):
        client.log_prediction("d", {"x": 1.0}, label="a", model_version="1")
    t0 = time.monotonic()
    with pytest.raises(BackPressureTimeout, match="reachable"):
        client.log_prediction("d", {"x": 1.0}, label="a", model_version="1")
    assert 0.4 < time.monotonic() - t0 < 5
    assert len(producer) == 5
    producer._producer.purge()


def test_settings_operations_are_delegated(settings, topics):
    with CtloopClient(settings) as client:
        client.setup_feedback_loop("fraud", model_name="mlp")
        current = client.deployments.current("fraud")
    assert current["deployment"] == "fraud"
    events = read_to_end(settings, topics.deployments, timeout_s=20)
    assert events and events[-1].event_type == ev.DEPLOYMENT_CONFIGURED and events[-1].key == b"fraud"


def test_sdk_with_confluent_framing(settings, topics):
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from streams.serde import CONFLUENT_MAGIC, Serde

    serde = Serde(registry=SchemaRegistryClient.new_client({"url": "mock://sdk"}))
    with CtloopClient(settings, serde=serde) as client:
        pid = client.log_prediction("d", FEATURES, label="a", model_version="1", latency_ms=2)
        client.log_feedback(pid, "d", label="b")
    (prediction,) = read_to_end(settings, topics.predictions, serde=serde, timeout_s=20)
    (feedback,) = read_to_end(settings, topics.feedback, serde=serde, timeout_s=20)
    assert prediction.value["prediction_id"] == feedback.value["prediction_id"] == pid
    assert prediction.value["features"] == FEATURES and prediction.value["latency_ms"] == 2.0
    raw = read_to_end(settings, topics.predictions, serde=serde, timeout_s=20)
    assert raw and serde.registry.get_subjects()
    from tests.test_consumer import read_raw

    assert read_raw(settings, topics.predictions, 1)[0].value()[:1] == CONFLUENT_MAGIC


def test_sdk_bytes_equal_the_serde_encoding(settings):
    """The SDK's positional fast path writes exactly what Serde.encode writes for the same record."""
    serde = __import__("streams.serde", fromlist=["Serde"]).Serde()
    captured = []

    class Capture(EventProducer):
        def produce_raw(self, topic, value, key=None, headers=None):
            captured.append(value)

    producer = Capture(settings, serde)
    client = CtloopClient(settings, producer=producer)
    t = time.time_ns() // 1_000_000 - 60_000
    client.log_prediction("d", FEATURES, label="a", probabilities={"a": 1.0}, model_version="1", model_name="m",
                          role="canary", latency_ms=3, event_time=t, prediction_id="p-1")
    client.log_prediction("d", {"x": 1}, score=0.25, model_version="2", prediction_id="p-2")
    for value in captured:
        decoded = serde.decode(value)
        assert serde.encode(ev.PREDICTION_LOGGED, decoded.value) == value
    first = serde.decode(captured[0]).value
    assert (first["role"], first["latency_ms"], first["event_time"], first["prediction_id"]) == (
        "canary", 3.0, t, "p-1")
    assert serde.decode(captured[1]).value["features"] == {"x": 1.0}
    producer.close(1)
