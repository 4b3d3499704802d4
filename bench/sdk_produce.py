"""Benchmark: SDK ``log_prediction`` events/s against raw confluent-kafka, in one run.

    python bench/sdk_produce.py [--n 200000] [--rounds 2] [--json]

(``run(quick)`` is the interface of bench/run.py / ``ctloop bench``: see bench/README.md.)

Uses CTLOOP_BOOTSTRAP_SERVERS when set, else starts the embedded broker. Both sides produce
20-feature predictions to the same topic with the same producer configuration
(``streams.kafka_config.producer_config``); the raw side produces pre-encoded bytes of the same size with
pre-made keys, so the ratio is the SDK's own per-event cost (validation, ids, encoding). The SDK is
measured with its C encoder (streams/_speedups.c, when built) and with the pure-Python encoders
(``sdk_speedups=False``). Also prints fastavro single-record encode/decode rates next to the compiled
encoder, for reference.
Prints figures; it is not a test.
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import platform
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fastavro

FEATURES = {f"feature_{i:02d}": 0.1 * i + 0.003 for i in range(20)}
PROBABILITIES = {"legit": 0.93, "fraud": 0.07}


def _sdk_rate(settings, n: int) -> tuple[float, float, int]:
    """(events/s until all delivered, events/s of the calls alone, delivered)."""
    from streams.sdk import CtloopClient

    client = CtloopClient(settings)
    log = client.log_prediction
    log("fraud-detector", FEATURES, label="legit", probabilities=PROBABILITIES, model_version="7", model_name="mlp")
    client.flush(30)  # connected, metadata known, caches warm: the timing below is the steady state
    t0 = time.perf_counter()
    for _ in range(n):
        log("fraud-detector", FEATURES, label="legit", probabilities=PROBABILITIES, model_version="7",
            model_name="mlp", latency_ms=0.8)
    calls = time.perf_counter() - t0
    client.flush(120)
    elapsed = time.perf_counter() - t0
    client.close()
    delivered = client.producer.delivered - 1
    del client, log
    gc.collect()  # the producer's delivery callback is a cycle: free its connections now, not at exit
    return n / elapsed, n / calls, delivered


def _raw_rate(settings, topic: str, value: bytes, n: int) -> tuple[float, float]:
    """(events/s until all delivered, events/s of the produce calls alone)."""
    from confluent_kafka import Producer

    from streams.kafka_config import producer_config

    producer = Producer(producer_config(settings))
    keys = [str(uuid.uuid4()) for _ in range(n)]
    produce, poll = producer.produce, producer.poll
    produce(topic, value, "warm-up")
    producer.flush(30)
    t0 = time.perf_counter()
    for i, key in enumerate(keys):
        try:
            produce(topic, value, key)
        except BufferError:
            poll(0.05)
            produce(topic, value, key)
        if i % 1000 == 0:
            poll(0)
    calls = time.perf_counter() - t0
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - t0
    assert remaining == 0, f"{remaining} raw messages undelivered"
    return n / elapsed, n / calls


def _codec_rates(n: int = 50_000) -> dict:
    from streams import catalog as ev
    from streams.serde import Serde, new_event

    serde = Serde()
    schema = serde.catalog[ev.PREDICTION_LOGGED]
    record = new_event(ev.PREDICTION_LOGGED, prediction_id=str(uuid.uuid4()), deployment="fraud-detector",
                       model_name="mlp", model_version="7", role="primary", features=FEATURES, label="legit",
                       probabilities=PROBABILITIES, latency_ms=0.8)
    parsed = schema.parsed
    rates = {}

    t0 = time.perf_counter()
    for _ in range(n):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, record)
    rates["fastavro_encode_per_s"] = n / (time.perf_counter() - t0)
    body = buf.getvalue()

    encode = serde._encoder(ev.PREDICTION_LOGGED)[1]
    t0 = time.perf_counter()
    for _ in range(n):
        encode(record)
    rates["compiled_encode_per_s"] = n / (time.perf_counter() - t0)
    assert encode(record) == body

    t0 = time.perf_counter()
    for _ in range(n):
        fastavro.schemaless_reader(io.BytesIO(body), parsed, None)
    rates["fastavro_decode_per_s"] = n / (time.perf_counter() - t0)

    framed = serde.encode(ev.PREDICTION_LOGGED, record)
    t0 = time.perf_counter()
    for _ in range(n):
        serde.decode(framed)
    rates["serde_decode_per_s"] = n / (time.perf_counter() - t0)
    rates["value_bytes"] = len(framed)
    return rates


def measure(n: int, rounds: int, settings=None) -> dict:
    """Every figure of this benchmark, in one dict."""
    import contextlib

    from confluent_kafka.admin import AdminClient

    from infra.settings import Settings
    from infra.stack import kafka_stack
    from streams import catalog as ev
    from streams.serde import Serde, new_event
    from streams.kafka_config import client_config
    from streams.topics import Topics, ensure_topics

    base = (settings or Settings.from_env()).replace(topic_prefix=f"bench{uuid.uuid4().hex[:6]}.")
    with contextlib.ExitStack() as stack:
        s = stack.enter_context(kafka_stack(base))
        topics = Topics.from_settings(s)
        ensure_topics(AdminClient(client_config(s)), topics, ["predictions"])
        serde = Serde.from_settings(s)
        sample = new_event(ev.PREDICTION_LOGGED, prediction_id=str(uuid.uuid4()), deployment="fraud-detector",
                           model_name="mlp", model_version="7", role="primary", features=FEATURES, label="legit",
                           probabilities=PROBABILITIES, latency_ms=0.8)
        value = serde.encode(ev.PREDICTION_LOGGED, sample, topics.predictions)
        from streams.sdk import _encode_prediction_c

        sdk, raw, sdk_calls, raw_calls, sdk_python = [], [], [], [], []
        python_settings = s.replace(sdk_speedups=False)
        _raw_rate(s, topics.predictions, value, min(n, 20_000))  # warm-up: connections, metadata
        for _ in range(rounds):
            rate, call_rate = _raw_rate(s, topics.predictions, value, n)
            raw.append(rate)
            raw_calls.append(call_rate)
            rate, call_rate, delivered = _sdk_rate(s, n)
            assert delivered == n, f"SDK delivered {delivered} of {n}"
            sdk.append(rate)
            sdk_calls.append(call_rate)
            rate, _, delivered = _sdk_rate(python_settings, n)
            assert delivered == n, f"SDK (pure Python) delivered {delivered} of {n}"
            sdk_python.append(rate)
        result = {
            "events_per_round": n, "rounds": rounds, "value_bytes": len(value),
            "bootstrap": "embedded" if not base.bootstrap_servers else "configured",
            "sdk_events_per_s": max(sdk), "raw_events_per_s": max(raw),
            "ratio_sdk_to_raw": max(sdk) / max(raw),
            "sdk_rounds": sdk, "raw_rounds": raw,
            "sdk_encoder": "c" if _encode_prediction_c is not None and s.sdk_speedups else "python",
            "sdk_python_events_per_s": max(sdk_python), "ratio_sdk_python_to_raw": max(sdk_python) / max(raw),
            "sdk_calls_per_s": max(sdk_calls), "raw_calls_per_s": max(raw_calls),
            "machine": f"{platform.machine()} python {platform.python_version()}",
        }
    result.update(_codec_rates())
    return result


def run(quick: bool) -> list[dict]:
    """Rows for bench/run.py (see bench/README.md)."""
    r = measure(50_000 if quick else 200_000, 2)
    note = f"{r['value_bytes']}-byte 20-feature predictions, {r['bootstrap']} broker, best of {r['rounds']}"
    return [
        {"name": "SDK log_prediction throughput", "value": r["sdk_events_per_s"], "unit": "events/s",
         "peer_name": "raw confluent-kafka produce of pre-encoded bytes", "peer_value": r["raw_events_per_s"],
         "notes": f"{note}; {r['sdk_encoder']} encoder; target SDK >= 1/3 of raw, aim 1/2"},
        {"name": "SDK log_prediction throughput, pure-Python encoders", "value": r["sdk_python_events_per_s"],
         "unit": "events/s", "peer_name": "raw confluent-kafka produce of pre-encoded bytes",
         "peer_value": r["raw_events_per_s"], "notes": f"{note}; sdk_speedups=False (no C compiler at install)"},
        {"name": "compiled Avro encoder (PredictionLogged)", "value": r["compiled_encode_per_s"], "unit": "records/s",
         "peer_name": "fastavro schemaless_writer", "peer_value": r["fastavro_encode_per_s"]},
        {"name": "serde.decode (framing + fastavro)", "value": r["serde_decode_per_s"], "unit": "records/s",
         "peer_name": "fastavro schemaless_reader alone", "peer_value": r["fastavro_decode_per_s"]},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="events per round and side")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    r = measure(args.n, args.rounds)
    if args.json:
        print(json.dumps(r))
        return
    print(f"{r['events_per_round']} events x {r['rounds']} rounds, {r['value_bytes']}-byte values, "
          f"{r['bootstrap']} broker, {r['machine']}")
    print(f"  raw confluent-kafka (pre-encoded) {r['raw_events_per_s']:>10,.0f} events/s")
    print(f"  SDK log_prediction ({r['sdk_encoder']} encoder)   {r['sdk_events_per_s']:>10,.0f} events/s")
    print(f"  ratio SDK / raw                   {r['ratio_sdk_to_raw']:>10.2f}   (target >= 0.33, aim 0.5)")
    print(f"  SDK, pure-Python encoders         {r['sdk_python_events_per_s']:>10,.0f} events/s"
          f"   (ratio {r['ratio_sdk_python_to_raw']:.2f})")
    print(f"  calls alone (until the last call returned; delivery continues in librdkafka's threads):")
    print(f"    raw produce()                   {r['raw_calls_per_s']:>10,.0f} calls/s")
    print(f"    SDK log_prediction()            {r['sdk_calls_per_s']:>10,.0f} calls/s")
    print(f"  fastavro encode                   {r['fastavro_encode_per_s']:>10,.0f} /s")
    print(f"  compiled encoder                  {r['compiled_encode_per_s']:>10,.0f} /s")
    print(f"  fastavro decode                   {r['fastavro_decode_per_s']:>10,.0f} /s")
    print(f"  serde.decode (framing + decode)   {r['serde_decode_per_s']:>10,.0f} /s")


if __name__ == "__main__":
    main()
