"""Edge rules of issue 11 beyond the SDK's own call checks (tests/test_sdk.py): numbers a float32 model
cannot represent, strings that are not UTF-8, client clocks; consumers refuse what the SDK refuses, and
the trainers' dataset compile survives such a row already in the log."""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytest

from streams import catalog as ev
from streams.validation import (FLOAT32_MAX, InvalidEvent, check_event_time, check_number, unrepresentable_rows,
                                validate_event)

NOW = 1_795_000_000_000
DAY_S = 86400.0


def prediction(**change) -> dict:
    value = dict(event_id="e", event_time=NOW, prediction_id="p", deployment="d", model_name="m", model_version="1",
                 role="primary", features={"x": 1.0}, label="a", score=None, probabilities={"a": 1.0}, latency_ms=0.5)
    value.update(change)
    return value


def feedback(**change) -> dict:
    value = dict(event_id="e", event_time=NOW, prediction_id="p", deployment="d", feedback_type="label",
                 kind="explicit", label="a", verdict=None, reviewer=None)
    value.update(change)
    return value


# -- numbers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, ok", [(FLOAT32_MAX, True), (-FLOAT32_MAX, True), (10**38, True), (0, True),
                                       (1e39, False), (-1e39, False), (10**39, False), (10**400, False),
                                       (math.inf, False), (math.nan, False), (True, False), ("1", False)])
def test_check_number_is_float32_finite(value, ok):
    if ok:
        assert check_number("score", value) == float(value)
    else:
        with pytest.raises(InvalidEvent) as err:
            check_number("score", value)
        assert err.value.field == "score"


INVALID_FROM_OTHER_PRODUCERS = [
    ("features['x']", prediction(features={"x": 1e39})),
    ("features['y']", prediction(features={"x": 1.0, "y": -3.5e38})),
    ("score", prediction(label=None, score=1e39)),
    ("latency_ms", prediction(latency_ms=1e39)),
    ("deployment", prediction(deployment="d\udcff")),
    ("model_name", prediction(model_name="\udcff")),
    ("label", prediction(label="a\udcff")),
    ("label", feedback(label="a\udcff")),
    ("reviewer", feedback(reviewer="r\udcff")),
    ("deployment", feedback(deployment="\ud800")),
]


@pytest.mark.parametrize("field, value", INVALID_FROM_OTHER_PRODUCERS,
                         ids=[f"{f}-{i}" for i, (f, _) in enumerate(INVALID_FROM_OTHER_PRODUCERS)])
def test_consumers_refuse_what_the_sdk_refuses_naming_the_field(field, value):
    event_type = ev.PREDICTION_LOGGED if "role" in value else ev.FEEDBACK_RECEIVED
    with pytest.raises(InvalidEvent) as err:
        validate_event(event_type, value)
    assert err.value.field == field


def test_invalid_utf8_from_another_producer_is_undecodable():
    """A lone surrogate cannot come out of the Avro decoder: invalid UTF-8 bytes in any string (map keys
    included) make the record undecodable, so consumers dead-letter it before validation."""
    from streams.serde import DecodeError, Serde

    serde = Serde()
    raw = serde.encode(ev.PREDICTION_LOGGED, prediction(features={"xQ": 1.0}))
    with pytest.raises(DecodeError, match="utf-8"):
        serde.decode(raw.replace(b"xQ", b"x\xff"))


def test_unrepresentable_rows_leave_missing_values_alone():
    x = np.array([[1.0, np.nan], [1e39, 0.0], [np.inf, 0.0], [FLOAT32_MAX, -FLOAT32_MAX], [0.0, -1e39]])
    assert unrepresentable_rows(x).tolist() == [False, True, True, False, True]


def test_one_row_beyond_float32_in_the_log_does_not_poison_training(caplog):
    """The issue's example: one labeled example with a feature of 1e39 made every later model all-NaN.
    build_dataset drops it (with a logged count) and the model trained on the rest is finite."""
    from trainers.dataset import build_dataset
    from trainers.models import Predictor
    from trainers.training import train_classifier

    rng = np.random.default_rng(3)
    rows = [{"prediction_id": f"p{i:04d}", "label": "a" if x > 0 else "b", "features": {"x": float(x), "y": 1.0},
             "prediction_time": NOW + i} for i, x in enumerate(rng.normal(size=200))]
    rows[17]["features"]["x"] = 1e39
    rows[42]["features"]["y"] = -math.inf
    with caplog.at_level(logging.WARNING, logger="trainers.dataset"):
        data = build_dataset(rows, min_examples=10)
    assert len(data) == 198 and "p0017" not in data.ids and "p0042" not in data.ids
    assert "dropped 2 of 200 rows" in caplog.text
    result = train_classifier(data.subset(~data.holdout_mask()), max_epochs=3)
    proba = Predictor(result.module, result.feature_names, result.classes).predict_proba(data.x)
    assert np.isfinite(proba).all()


# -- client clocks -------------------------------------------------------------------------------------
@pytest.mark.parametrize("event_time, ok", [(NOW, True), (NOW - 86399_000, True), (NOW + 299_000, True),
                                            (NOW - 86401_000, False), (NOW + 301_000, False), (0, False),
                                            (NOW * 1000, False), (float(NOW), False), (True, False), (2**63, False)])
def test_event_time_bound(event_time, ok):
    if ok:
        assert check_event_time(event_time, NOW, DAY_S, 300.0) == event_time
    else:
        with pytest.raises(InvalidEvent) as err:
            check_event_time(event_time, NOW, DAY_S, 300.0)
        assert err.value.field == "event_time"


def test_event_time_bound_of_zero_is_no_bound():
    assert check_event_time(0, NOW, 0, 0) == 0
    assert check_event_time(NOW * 2, NOW, DAY_S, 0) == NOW * 2
    with pytest.raises(InvalidEvent):
        check_event_time(0, NOW, DAY_S, 0)


def test_consumer_bound_is_against_the_record_timestamp_so_a_replay_passes():
    """A record appended a year ago with a then-current event_time is valid whenever it is read again;
    the same event_time on a record appended now is not."""
    year_ago = NOW - 365 * 86400_000
    value = prediction(event_time=year_ago + 10)
    validate_event(ev.PREDICTION_LOGGED, value, record_time_ms=year_ago, event_time_max_past_s=DAY_S,
                   event_time_max_future_s=300.0)
    with pytest.raises(InvalidEvent) as err:
        validate_event(ev.PREDICTION_LOGGED, value, record_time_ms=NOW, event_time_max_past_s=DAY_S,
                       event_time_max_future_s=300.0)
    assert err.value.field == "event_time" and "Kafka timestamp" in str(err.value)
    # no timestamp (-1, None): no clock to compare with
    validate_event(ev.PREDICTION_LOGGED, value, record_time_ms=-1, event_time_max_past_s=DAY_S)


def test_foreign_producer_skewed_event_time_is_dead_lettered_invalid(settings, topics):
    """Over the embedded broker: another producer (not the SDK) writes a prediction whose event_time is
    three days behind, and a feedback an hour ahead, of the record's timestamp (librdkafka's CreateTime:
    the producer's clock at produce). The consumer dead-letters both as invalid naming event_time and
    passes the good one; a feature of 1e39 is dead-lettered invalid naming features['x']."""
    from confluent_kafka import Producer

    from streams.consumer import EventConsumer, read_to_end
    from streams.serde import Serde
    from tests.helpers.processes import wait_for

    serde = Serde()
    now = time.time_ns() // 1_000_000
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
    records = [(topics.predictions, ev.PREDICTION_LOGGED, prediction(event_time=now - 3 * 86400_000, prediction_id="old")),
               (topics.feedback, ev.FEEDBACK_RECEIVED, feedback(event_time=now + 3600_000, prediction_id="ahead")),
               (topics.predictions, ev.PREDICTION_LOGGED, prediction(event_time=now, prediction_id="good")),
               (topics.predictions, ev.PREDICTION_LOGGED, prediction(event_time=now, prediction_id="big",
                                                                     features={"x": 1e39}))]
    for topic, event_type, value in records:
        producer.produce(topic, serde.encode(event_type, value), key=value["prediction_id"].encode())
    assert producer.flush(10) == 0
    seen = []
    with EventConsumer(settings, settings.topic_prefix + "edge", [topics.predictions, topics.feedback]) as consumer:
        def done():
            seen.extend(consumer.poll_batch(100, 0.2))
            return consumer.dead_lettered == 3 and len(seen) == 1
        wait_for(done, 30, "three dead letters and one event")
        consumer.commit()
    assert seen[0].value["prediction_id"] == "good"
    letters = {e.value["key"]: e.value for e in read_to_end(settings, topics.dead_letters)}
    assert set(letters) == {b"old", b"ahead", b"big"}
    assert all(letter["error_type"] == "invalid" for letter in letters.values())
    assert "features['x']" in letters[b"big"]["reason"] and "float32" in letters[b"big"]["reason"]
    assert "before the record's Kafka timestamp" in letters[b"old"]["reason"]
    assert "after the record's Kafka timestamp" in letters[b"ahead"]["reason"]


def test_serving_blames_the_request_for_big_numbers_and_the_model_for_nan_output(settings, topics):
    """Deployment.predict: a feature of 1e39 is refused naming features['x'] (it used to reach the model
    and come back as NaN probabilities, blamed on ``probabilities``); a model that does return NaN
    probabilities raises ModelOutputError naming the model version, not InvalidEvent."""
    from trainers.serving import Deployment
    from streams.validation import ModelOutputError
    from tests.test_serving import register_model

    register_model(settings, "edge", "v1", +1, alias="champion")
    register_model(settings, "nan", "v1", math.nan, alias="champion")  # NaN weights: NaN probabilities
    with Deployment(settings, "edge") as good, Deployment(settings, "nan") as poisoned:
        good.start(timeout_s=20)
        poisoned.start(timeout_s=20)
        assert good.predict({"x": 1e30, "y": 0.0}).label == "a"  # (5 * FLOAT32_MAX overflows this toy model)
        with pytest.raises(InvalidEvent) as err:
            good.predict({"x": 1e39, "y": 0.0})
        assert err.value.field == "features['x']"
        with pytest.raises(ModelOutputError) as err:
            poisoned.predict({"x": 1.0, "y": 0.0})
        assert err.value.field.startswith("probabilities") and "model version v1" in str(err.value)


def test_processor_stage_dead_letters_a_skewed_event_time(settings, topics):
    """The faust path (processors/dead_letters.decode_message, faust's timestamp in seconds): the feedback
    join, owner of predictions, dead-letters a foreign prediction whose event_time is three days behind
    its record's timestamp, and joins the good one."""
    from confluent_kafka import Producer

    from streams.serde import Serde
    from tests.helpers.collect import Collector
    from tests.helpers.processes import running_processors
    from streams.sdk import CtloopClient

    with CtloopClient(settings) as client:
        client.setup_feedback_loop("d", model_name="m")
    serde, now = Serde(), time.time_ns() // 1_000_000
    with running_processors(settings, stages=["processors.feedback_join"], timeout_s=60), \
            Collector(settings, topics.dead_letters, topics.labeled_examples) as out:
        producer = Producer({"bootstrap.servers": settings.bootstrap_servers})
        for value in (prediction(event_time=now - 3 * 86400_000, prediction_id="old"),
                      prediction(event_time=now, prediction_id="good")):
            producer.produce(topics.predictions, serde.encode(ev.PREDICTION_LOGGED, value),
                             key=value["prediction_id"].encode())
        producer.produce(topics.feedback, serde.encode(ev.FEEDBACK_RECEIVED, feedback(prediction_id="good",
                                                                                     event_time=now)), key=b"good")
        assert producer.flush(10) == 0
        letters = out.wait(lambda c: c.of(ev.DEAD_LETTER, error_type="invalid"), 45, "the skewed prediction's dead letter")
        out.wait(lambda c: c.of(ev.LABELED_EXAMPLE, prediction_id="good"), 45, "the good prediction joined")
    assert [d.key for d in letters] == [b"old"]
    assert "event_time" in letters[0].value["reason"] and "Kafka timestamp" in letters[0].value["reason"]
