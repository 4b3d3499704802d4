"""Delivery reporting (issue 17.1): an event not acknowledged when flush's timeout passes is *in flight*
(still retried), not failed; only events the client gave up on are *lost*, named with their event ids and
bytes so an app can re-send exactly those. Over a real broker that goes away and comes back."""
from __future__ import annotations

import pytest

from infra.embedded import EmbeddedBroker, free_port
from infra.settings import Settings
from streams import catalog as ev
from streams.consumer import read_to_end
from streams.producer import DeliveryError, EventProducer
from streams.sdk import CtloopClient
from streams.topics import Topics, ensure_topics

DEAD_BROKER = "127.0.0.1:1"


def _admin(settings):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": settings.bootstrap_servers})


def test_events_unacknowledged_while_the_broker_is_down_are_in_flight_then_delivered(tmp_path):
    port = free_port()
    settings = Settings(bootstrap_servers=f"127.0.0.1:{port}", topic_prefix="down.", default_partitions=2,
                        data_dir=str(tmp_path))
    topics = Topics.from_settings(settings)
    broker = EmbeddedBroker(port=port).start()
    try:
        ensure_topics(_admin(settings), topics)
        producer = EventProducer(settings, **{"log_level": 0})
        client = CtloopClient(settings, producer=producer)
        client.log_prediction("d", {"x": 0.0}, label="a", model_version="1")
        client.flush(timeout_s=30)
        broker.stop()                                     # the broker goes away while the app logs
        pids = [client.log_prediction("d", {"x": float(i)}, label="a", model_version="1") for i in range(1, 51)]
        with pytest.raises(DeliveryError) as err:
            client.flush(timeout_s=1)
        assert err.value.in_flight >= 50 and err.value.lost == [] and err.value.count == 0
        assert "not lost" in str(err.value) and "do not re-send" in str(err.value)
        broker = EmbeddedBroker(port=port).start()       # back (empty: the embedded broker keeps no data)
        ensure_topics(_admin(settings), topics)
        client.flush(timeout_s=60)                        # the same events, delivered: no error
        producer.close(10)
        logged = {e.value["prediction_id"] for e in read_to_end(settings, topics.predictions, timeout_s=30)}
        assert set(pids) <= logged
    finally:
        broker.stop()


def test_lost_events_are_named_with_their_ids_and_can_be_resent(settings, topics):
    dead = settings.replace(bootstrap_servers=DEAD_BROKER, producer_delivery_timeout_ms=500)
    producer = EventProducer(dead, **{"log_level": 0})
    client = CtloopClient(dead, producer=producer)
    pids = [client.log_prediction("d", {"x": float(i)}, label="a", model_version="1") for i in range(3)]
    with pytest.raises(DeliveryError) as err:
        client.flush(timeout_s=10)
    lost = err.value.lost
    assert err.value.count == 3 and err.value.in_flight == 0 and "3 event(s) lost" in str(err.value)
    assert sorted(e.key.decode() for e in lost) == sorted(pids)
    assert all(e.topic == topics.predictions and e.event_id and "timed out" in e.error.lower() for e in lost)
    producer._producer.purge()
    # re-sent byte for byte through a working producer: the same event ids arrive
    with EventProducer(settings) as good:
        good.resend(lost)
    events = read_to_end(settings, topics.predictions, timeout_s=30)
    assert sorted(e.value["event_id"] for e in events) == sorted(e.event_id for e in lost)
    assert all(e.event_type == ev.PREDICTION_LOGGED for e in events)


def test_close_reports_unsent_events_as_lost(settings):
    dead = settings.replace(bootstrap_servers=DEAD_BROKER)   # the default delivery timeout: 300 s
    producer = EventProducer(dead, **{"log_level": 0})
    client = CtloopClient(dead, producer=producer)
    pids = [client.log_prediction("d", {"x": float(i)}, label="a", model_version="1") for i in range(4)]
    with pytest.raises(DeliveryError) as err:
        producer.close(timeout_s=0.5)
    assert err.value.count == 4 and err.value.in_flight == 0
    assert sorted(e.key.decode() for e in err.value.lost) == sorted(pids)


def test_after_close_raised_the_lost_events_are_resent_through_a_new_client(settings, topics):
    """The README's advice after close(): the closed client refuses resend; a new client sends the lost
    events byte for byte (the same event ids)."""
    dead = settings.replace(bootstrap_servers=DEAD_BROKER)
    client = CtloopClient(dead)                       # its own producer: close() closes it
    pids = [client.log_prediction("d", {"x": float(i)}, label="a", model_version="1") for i in range(3)]
    with pytest.raises(DeliveryError) as err:
        client.close(timeout_s=0.5)
    lost = err.value.lost
    assert sorted(e.key.decode() for e in lost) == sorted(pids)
    assert "re-send them through a new producer: this one is closed" in str(err.value)
    with pytest.raises(RuntimeError, match="producer is closed: re-send the lost events through a new one"):
        client.producer.resend(lost)
    with CtloopClient(settings) as fresh:
        fresh.producer.resend(lost)
    events = read_to_end(settings, topics.predictions, timeout_s=30)
    assert sorted(e.value["event_id"] for e in events) == sorted(e.event_id for e in lost)
    assert sorted(e.value["prediction_id"] for e in events) == sorted(pids)
