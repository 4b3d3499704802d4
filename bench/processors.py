"""Benchmark of the stream processors (prints figures; not a test).

1. Throughput of the feedback join (events/s), side by side with a hand-written confluent-kafka
   consume loop doing the same decoding, joining and counting, in the same run on the same events.
   The processor also writes labeled examples, dead letters, stats and table changelogs.
2. Trigger latency: from producing the feedback event that crosses the review threshold to the
   TrainingTriggered event arriving on the triggers topic, median and p99 over repeated crossings.

Usage: python bench/processors.py [--events 20000] [--crossings 30]; ``run(quick)`` for bench/run.py
(CTLOOP_BOOTSTRAP_SERVERS to use a cluster; else an embedded broker is started.)
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from infra.harness.collect import Collector  # noqa: E402
from infra.harness.processes import running_processors  # noqa: E402
from infra.settings import Settings  # noqa: E402
from infra.stack import kafka_stack  # noqa: E402
from streams import catalog as ev  # noqa: E402
from streams.kafka_config import client_config  # noqa: E402
from streams.producer import EventProducer  # noqa: E402
from streams.sdk import CtloopClient  # noqa: E402
from streams.serde import Serde, new_event  # noqa: E402
from streams.topics import Topics, ensure_topics  # noqa: E402


def metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", body, re.M):
        total += float(m.group(1))
    return total


def produce_stream(settings, n: int, dep: str) -> None:
    with CtloopClient(settings) as client:
        pids = [client.log_prediction(dep, {"x": float(i % 97), "y": float(i % 13)}, label="a", model_version="1")
                for i in range(n)]
        for i, pid in enumerate(pids):
            client.log_feedback(pid, dep, label="a" if i % 3 else "b")


def baseline_loop(settings, total: int) -> float:
    """Hand-written loop: decode, join by prediction id, count per deployment. Returns events/s."""
    topics = Topics.from_settings(settings)
    serde = Serde.from_settings(settings)
    c = Consumer(client_config(settings, {"group.id": f"bench-{uuid.uuid4().hex[:6]}",
                                          "enable.auto.commit": False, "fetch.wait.max.ms": 10}))
    assign = []
    for t in (topics.predictions, topics.feedback):
        for p in c.list_topics(t, timeout=10).topics[t].partitions:
            assign.append(TopicPartition(t, p, OFFSET_BEGINNING))
    c.assign(assign)
    pending, joined, parked = {}, set(), defaultdict(list)
    counts = defaultdict(lambda: defaultdict(int))
    seen = 0
    started = None
    deadline = time.monotonic() + 120
    while seen < total and time.monotonic() < deadline:
        for msg in c.consume(2000, 0.2):
            if msg.error():
                continue
            if started is None:
                started = time.perf_counter()
            seen += 1
            d = serde.decode(msg.value())
            v = d.value
            pid = v["prediction_id"]
            if d.event_type == ev.PREDICTION_LOGGED:
                counts[v["deployment"]]["predictions"] += 1
                pending[pid] = v
                for fb in parked.pop(pid, ()):
                    if pid not in joined:
                        joined.add(pid)
                        counts[v["deployment"]]["reviewed"] += 1
            else:
                counts[v["deployment"]]["feedback"] += 1
                if pid in pending:
                    if pid not in joined:
                        joined.add(pid)
                        counts[v["deployment"]]["reviewed"] += 1
                else:
                    parked[pid].append(v)
    elapsed = time.perf_counter() - started
    c.close()
    assert seen == total, f"baseline saw {seen}/{total}"
    return total / elapsed


def processor_throughput(settings, total: int) -> tuple[float, float]:
    """Start a worker on the already-produced stream; events/s from its own event counter."""
    with running_processors(settings, stages=["processors.feedback_join"], timeout_s=90) as proc:
        port = proc.ready["metrics_port"]
        name = "ctloop_feedback_join_events_total"
        first = None
        deadline = time.monotonic() + 180
        while True:
            n = metric(port, name)
            now = time.perf_counter()
            if n > 0 and first is None:
                first = (now, n)
            if n >= total:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"processor handled {n}/{total} events")
            time.sleep(0.02)  # sampling the metrics endpoint inside a deadline loop
        batch_mean = metric(port, "ctloop_feedback_join_batch_seconds_sum") / max(1, metric(port, "ctloop_feedback_join_batch_seconds_count"))
    return (total - first[1]) / (now - first[0]), batch_mean


def trigger_latency(settings, crossings: int, threshold: int) -> list[float]:
    topics = Topics.from_settings(settings)
    dep = "bench-trigger"
    out = []
    with running_processors(settings, stages=["processors.feedback_join", "processors.triggers"], timeout_s=90) as proc, \
            CtloopClient(settings) as client, Collector(settings, topics.triggers, topics.feedback_stats) as col, \
            EventProducer(settings) as producer:
        port = proc.ready["metrics_port"]
        client.setup_feedback_loop(dep, model_name="m")
        client.setup_continuous_training(dep, trigger_threshold=threshold, cooldown_seconds=0)
        pids = [client.log_prediction(dep, {"x": 1.0}, label="a", model_version="1") for _ in range(crossings * threshold)]
        client.flush()
        it = iter(pids)
        for k in range(crossings):
            for _ in range(threshold - 1):
                client.log_feedback(next(it), dep, label="a")
            client.flush()
            want = (k + 1) * threshold - 1
            col.wait(lambda c: any(e.value["added_to_training"] == want for e in c.of(ev.FEEDBACK_LOOP_STATS)), 30, "stats")
            before = len(col.of(ev.TRAINING_TRIGGERED))
            t0 = time.perf_counter()
            client.log_feedback(next(it), dep, label="a")          # the crossing feedback
            client.flush()
            col.wait(lambda c: len(c.of(ev.TRAINING_TRIGGERED)) > before, 30, "trigger")
            out.append(time.perf_counter() - t0)
            trig = col.of(ev.TRAINING_TRIGGERED)[-1].value
            producer.produce(topics.model_lifecycle, ev.TRAINING_RUN_FAILED, new_event(
                ev.TRAINING_RUN_FAILED, run_id=str(uuid.uuid4()), trigger_id=trig["trigger_id"], deployment=dep,
                reason="bench", error_type="exception"), key=dep)
            producer.flush()
            deadline = time.monotonic() + 30
            while metric(port, "ctloop_triggers_outstanding") > 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("the run-failed event did not clear the outstanding trigger")
                time.sleep(0.01)  # polling the gauge inside a deadline loop
    return out


def measure(events: int, crossings: int, threshold: int, settings: Settings | None = None) -> dict:
    base = settings or Settings.from_env()
    with kafka_stack(base) as settings:
        data_dir = Path(tempfile.mkdtemp(prefix="ctloop-bench-processors-"))
        settings = settings.replace(topic_prefix=f"bench{uuid.uuid4().hex[:6]}.", data_dir=str(data_dir),
                                    stats_min_interval_s=0.05)
        ensure_topics(AdminClient(client_config(settings)), Topics.from_settings(settings))
        total = 2 * events
        produce_stream(settings, events, "bench-throughput")
        baseline = baseline_loop(settings, total)
        processor, batch = processor_throughput(settings, total)
        lat = sorted(trigger_latency(settings, crossings, threshold))
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    return {"events": total, "partitions": settings.default_partitions, "baseline": baseline, "processor": processor,
            "batch_s": batch, "latencies": lat, "median": statistics.median(lat), "p99": p99, "threshold": threshold}


def run(quick: bool) -> list[dict]:
    """Figures for bench/run.py (see bench/README.md)."""
    r = measure(3000 if quick else 20000, 5 if quick else 30, 10 if quick else 20)
    notes = f"{r['events']} events, {r['partitions']} partitions, one worker"
    return [
        {"name": "processor feedback join + counters throughput", "value": r["processor"], "unit": "events/s",
         "peer_name": "hand-written confluent-kafka loop (decode, join, count)", "peer_value": r["baseline"],
         "notes": notes + "; the processor also writes labeled examples, changelogs and stats"},
        {"name": "trigger latency median (crossing feedback -> trigger)", "value": r["median"] * 1000, "unit": "ms",
         "peer_name": "", "peer_value": None, "higher_is_better": False,
         "notes": f"{len(r['latencies'])} crossings of a review threshold of {r['threshold']}"},
        {"name": "trigger latency p99", "value": r["p99"] * 1000, "unit": "ms", "peer_name": "", "peer_value": None,
         "higher_is_better": False},
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20000, help="predictions (and as many feedback events)")
    ap.add_argument("--crossings", type=int, default=30)
    ap.add_argument("--threshold", type=int, default=20)
    args = ap.parse_args()
    r = measure(args.events, args.crossings, args.threshold)
    b, p, lat = r["baseline"], r["processor"], r["latencies"]
    print(f"throughput, {r['events']} events (predictions + feedback), {r['partitions']} partitions, one worker:")
    print(f"  hand-written confluent-kafka loop (decode + join + count):            {b:10.0f} events/s")
    print(f"  faust feedback_join stage (+ labeled examples, changelogs, stats):    {p:10.0f} events/s"
          f"  ({p / b:.2f}x; mean batch {r['batch_s'] * 1000:.1f} ms)")
    print(f"trigger latency (crossing feedback produced -> trigger on its topic), {len(lat)} crossings, "
          f"threshold {r['threshold']}:")
    print(f"  median {r['median'] * 1000:.1f} ms   p99 {r['p99'] * 1000:.1f} ms   "
          f"min {lat[0] * 1000:.1f} ms   max {lat[-1] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
