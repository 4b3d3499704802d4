"""Serving benchmark: ``Deployment.predict()`` latency with and without a shadow model, and how fast
the loop acts on evidence.

Figures (see bench/README.md for the interface):

* predict() p50 / p99 without a shadow, peer: the bare ``Predictor.predict`` call (model only, no
  logging) -- the SDK's own cost on the request path;
* predict() p50 / p99 with a shadow, peer: the same without a shadow -- what shadowing adds;
* decision latency: from the labeled sample that satisfies the promotion policy (the min_samples-th
  labeled pair, logged by the app) to the ModelPromoted event (policy stage, processor worker
  subprocess running shadow_comparison + promotion);
* swap latency: from the ModelPromoted event to the app serving the new version.

    python bench/serving.py [--quick]
"""
from __future__ import annotations

import gc
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FEATURES = [f"f{i}" for i in range(8)]


def _pct(values: list[float], q: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, int(round(q / 100 * (len(data) - 1))))]


def _register(settings, dep: str, version: str, alias: str, seed: int) -> None:
    import torch

    from streams import catalog as ev
    from streams.producer import EventProducer
    from streams.serde import new_event
    from trainers.artifacts import ArtifactStore
    from trainers.models import DEFAULT_FACTORY, build_model, model_config

    torch.manual_seed(seed)
    config = model_config(FEATURES, ["a", "b", "c"])
    module = build_model(DEFAULT_FACTORY, config)
    uri, sha = ArtifactStore(settings.resolved_artifact_store).save(dep, version, module.state_dict())
    record = new_event(ev.MODEL_REGISTERED, deployment=dep, model_name="bench", model_version=version, alias=alias,
                       metrics={}, artifact_uri=uri, artifact_sha256=sha, model_factory=DEFAULT_FACTORY,
                       model_config=config)
    with EventProducer(settings) as producer:
        producer.produce(f"{settings.topic_prefix}model-lifecycle", ev.MODEL_REGISTERED, record, key=dep)


def _latencies(serving, rows: list[dict]) -> list[float]:
    out = []
    for row in rows:
        start = time.perf_counter()
        serving.predict(row)
        out.append((time.perf_counter() - start) * 1000.0)
    return out


def run(quick: bool = False) -> list[dict]:
    import random

    from confluent_kafka.admin import AdminClient

    from infra.settings import Settings
    from infra.stack import kafka_stack
    from streams import catalog as ev
    from streams.consumer import read_to_end
    from streams.sdk import CtloopClient
    from trainers.serving import Deployment
    from streams.kafka_config import client_config
    from streams.topics import Topics, ensure_topics
    from infra.harness.processes import running_processors, wait_for

    n = 400 if quick else 3000
    min_samples = 100 if quick else 300
    rng = random.Random(7)
    rows = [{f: rng.gauss(0, 1) for f in FEATURES} for _ in range(n)]
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ctloop-bench-serving-") as tmp, \
            kafka_stack(Settings(data_dir=tmp)) as base:
        settings = base.replace(topic_prefix=f"bench{uuid.uuid4().hex[:8]}.", data_dir=tmp)
        ensure_topics(AdminClient(client_config(settings)), Topics.from_settings(settings))
        topics = Topics.from_settings(settings)
        dep = "bench"
        _register(settings, dep, "v1", "champion", 1)
        _register(settings, dep, "v2", "challenger", 2)

        # -- 1. latency without / with a shadow ---------------------------------------------------
        with Deployment(settings, dep) as serving, CtloopClient(settings) as client:
            serving.start(timeout_s=30)
            model = serving._served.primary
            _latencies(serving, rows[:200])  # warm-up
            raw = []
            for row in rows:
                start = time.perf_counter()
                model.predict(row)
                raw.append((time.perf_counter() - start) * 1000.0)
            plain = _latencies(serving, rows)
            client.set_shadow_model(dep, "v2")
            serving.wait_for(lambda s: s.shadow_version == "v2", timeout_s=30)
            _latencies(serving, rows[:200])
            shadowed = _latencies(serving, rows)
            dropped = serving.shadow_dropped
            client.set_shadow_model(dep, None)
            serving.wait_for(lambda s: s.shadow_version is None, timeout_s=30)
        notes = f"{n} requests, 8-feature tabular MLP (64x64), CPU, SDK logging on"
        results += [
            {"name": "predict() p50, no shadow", "value": _pct(plain, 50), "unit": "ms",
             "peer_name": "bare Predictor.predict p50", "peer_value": _pct(raw, 50), "notes": notes},
            {"name": "predict() p99, no shadow", "value": _pct(plain, 99), "unit": "ms",
             "peer_name": "bare Predictor.predict p99", "peer_value": _pct(raw, 99), "notes": notes},
            {"name": "predict() p50, with shadow", "value": _pct(shadowed, 50), "unit": "ms",
             "peer_name": "predict() p50, no shadow", "peer_value": _pct(plain, 50),
             "notes": f"shadow inferences dropped (queue full): {dropped}"},
            {"name": "predict() p99, with shadow", "value": _pct(shadowed, 99), "unit": "ms",
             "peer_name": "predict() p99, no shadow", "peer_value": _pct(plain, 99),
             "notes": f"mean {statistics.fmean(shadowed):.3f} ms vs {statistics.fmean(plain):.3f} ms"},
        ]

        # -- 2. decision latency and swap latency -----------------------------------------------
        settings = settings.replace(shadow_comparison_every=50, shadow_comparison_interval_s=5.0)
        with CtloopClient(settings) as client:
            client.setup_continuous_deployment(dep, min_samples=min_samples, promotion_threshold=0.05)
            client.set_shadow_model(dep, "v2")
        sent_at: list[float] = []
        with running_processors(settings, stages=["shadow_comparison", "promotion"], timeout_s=60), \
                Deployment(settings, dep) as serving, CtloopClient(settings) as app:
            serving.start(timeout_s=30)
            serving.wait_for(lambda s: s.shadow_version == "v2", timeout_s=30)
            swapped_at: dict = {}

            def watch_swap():
                serving.wait_for(lambda s: s.primary_version == "v2", timeout_s=120)
                swapped_at["t"] = time.time()

            watcher = threading.Thread(target=watch_swap, daemon=True)
            watcher.start()
            # the app labels its traffic: the shadow (v2) is right on every request, the primary on half
            i = 0
            promoted = None
            deadline = time.monotonic() + 120
            while promoted is None and time.monotonic() < deadline and serving.primary_version == "v1":
                for _ in range(10):
                    row = rows[i % n]
                    i += 1
                    pid = app.log_prediction(dep, row, label="a" if i % 2 else "b", model_version="v1", latency_ms=1.0)
                    app.log_prediction(dep, row, label="a", model_version="v2", role="shadow", prediction_id=pid,
                                       latency_ms=1.0)
                    app.log_feedback(pid, dep, label="a")
                    sent_at.append(time.time())
                app.flush()
                time.sleep(0.02)  # ~500 labeled requests/s: a steady stream, not synchronisation
                if i % 200 == 0:
                    found = [e for e in read_to_end(settings, topics.model_updates, timeout_s=10)
                             if e.event_type == ev.MODEL_PROMOTED and e.value["deployment"] == dep]
                    promoted = found[0] if found else None
            watcher.join(60)
            promoted = wait_for(lambda: next((e for e in read_to_end(settings, topics.model_updates, timeout_s=10)
                                           if e.event_type == ev.MODEL_PROMOTED), None), 60, "ModelPromoted")
            comparisons = [e.value for e in read_to_end(settings, topics.shadow_comparisons, timeout_s=10)
                           if e.value["labeled_samples"] >= min_samples]
        del serving, app, client  # let the clients' librdkafka handles go before the broker stops
        gc.collect()
        promoted_ms = promoted.value["event_time"]
        satisfied_at = sent_at[min_samples - 1]
        compared_s = comparisons[0]["event_time"] / 1000 - satisfied_at if comparisons else float("nan")
        results += [
            {"name": "satisfying sample -> ModelPromoted", "value": promoted_ms / 1000 - satisfied_at, "unit": "s",
             "peer_name": None, "peer_value": None,
             "notes": f"min_samples={min_samples}, ~500 labeled req/s, comparison every 50 labeled pairs "
                      f"(or 5 s); evidence n={promoted.value['evidence'].get('labeled_samples')}; "
                      f"ShadowComparison after {compared_s:.3f} s"},
            {"name": "ModelPromoted -> app serves new version", "value": swapped_at.get("t", float("nan")) - promoted_ms / 1000,
             "unit": "s", "peer_name": None, "peer_value": None, "notes": "Deployment follower + predictor load"},
        ]
    return results


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        peer = f"  (peer {r['peer_name']}: {r['peer_value']:.3f})" if r.get("peer_value") is not None else ""
        print(f"{r['name']:<42} {r['value']:9.3f} {r['unit']}{peer}  {r.get('notes', '')}")
