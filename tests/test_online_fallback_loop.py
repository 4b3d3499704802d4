"""The online fallback over the real (embedded) broker: a processor worker running the fallback stage
folds labeled examples in which the champion is wrong and the rule is learnable, engages the fallback
once (OnlineFallbackSwitched active), a serving Deployment then serves online:hat, and after a
ModelPromoted it serves the champion again. While the fallback serves, the promotion stage judges the
shadow against it, not against the champion it replaced. LabeledExamples are produced directly (the
feedback join is tested elsewhere); the champion is a real logistic regression loaded from the artifact
store. One worker (online_fallback, shadow_comparison, promotion) serves the module; each test has its
own deployment."""
from __future__ import annotations

import random
import uuid

import pytest

from infra.settings import Settings

from infra.commands.serving import _format_status, deployment_status
from streams import catalog as ev
from streams.consumer import read_to_end
from streams.deployments import DeploymentSettingsClient
from streams.fallback_fold import fold_events
from streams.producer import EventProducer
from streams.sdk import CtloopClient
from streams.serde import new_event, now_ms
from trainers.serving import Deployment
from streams.topics import Topics, ensure_topics
from tests.helpers.processes import running_processors, wait_for
from tests.test_serving import register_model

pytestmark = pytest.mark.timeout(180)
STAGES = ["processors.online_fallback", "processors.shadow_comparison", "processors.promotion"]


@pytest.fixture(scope="module")
def loop(kafka_bootstrap, tmp_path_factory):
    from confluent_kafka.admin import AdminClient

    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
                        default_partitions=4, data_dir=str(tmp_path_factory.mktemp("fallback") / "data"),
                        shadow_comparison_every=10, shadow_comparison_interval_s=0.5)
    topics = Topics.from_settings(settings)
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), topics)
    with running_processors(settings, stages=STAGES, timeout_s=60):
        yield settings, topics


def setup(settings, dep, *, shadow=None):
    register_model(settings, dep, "v1", +1, alias="champion")
    register_model(settings, dep, "v2", -1)                  # v2 gets the rule right
    client = DeploymentSettingsClient(settings)
    try:
        client.setup_continuous_deployment(dep, promotion_threshold=0.05, min_samples=30, fast_promotion_min_samples=30)
        client.setup_online_fallback(dep, "hat")
        if shadow:
            client.set_shadow_model(dep, shadow)
    finally:
        client.close()


def produce_examples(settings, topics, dep, n, seed=5):
    rnd = random.Random(seed)
    with EventProducer(settings) as producer:
        for _ in range(n):
            value = labeled(dep, rnd.uniform(-1, 1), rnd.uniform(-1, 1))
            producer.produce(topics.labeled_examples, ev.LABELED_EXAMPLE, value, key=value["prediction_id"])


def labeled(dep, x, y, *, version="v1"):
    truth = "a" if x < 0 else "b"          # the rule the champion v1 (says "a" when x > 0) gets wrong
    served = "a" if x > 0 else "b"
    now = now_ms()
    return new_event(ev.LABELED_EXAMPLE, prediction_id=str(uuid.uuid4()), deployment=dep, model_version=version,
                     role="primary", features={"x": x, "y": y}, predicted_label=served, label=truth,
                     correct=served == truth, feedback_event_id=str(uuid.uuid4()), prediction_time=now,
                     feedback_time=now)


def switches(settings, topics, dep):
    return [e for e in read_to_end(settings, topics.model_updates, timeout_s=10)
            if e.event_type == ev.ONLINE_FALLBACK_SWITCHED and e.value["deployment"] == dep]


@pytest.mark.slow
def test_fallback_engages_serves_the_online_learner_and_a_promotion_retires_it(loop):
    settings, topics = loop
    dep = "fb"
    setup(settings, dep)
    produce_examples(settings, topics, dep, 300)
    with EventProducer(settings) as producer:
        engaged = wait_for(lambda: switches(settings, topics, dep), 60, "OnlineFallbackSwitched", interval_s=0.2)
        first = engaged[0].value
        assert (first["active"], first["model_version"], first["champion_version"], first["learner"]) == \
            (True, "online:hat", "v1", "hat")
        assert first["expected_decision"] is None and first["decided_by"] == "policy"
        e = first["evidence"]
        assert float(e["learner_accuracy"]) - float(e["champion_accuracy"]) >= 0.05
        if e["rule"] == "collapse":   # the champion collapsed below its registered accuracy on the last pairs
            assert float(e["champion_collapse_pvalue"]) < float(e["collapse_level"]) and int(e["window"]) >= 30
        else:
            assert e["rule"] == "window" and float(e["mcnemar_pvalue"]) < 0.05 and int(e["window"]) >= 30

        status = deployment_status(settings, dep)
        fb = status["online_fallback"]
        assert (fb["active"], fb["model_version"], fb["champion_version"], fb["learner"]) == (True, "online:hat", "v1", "hat")
        assert fb["since"] == first["event_time"] and "ACTIVE" in _format_status(status)
        assert status["recent_decisions"][-1]["decision"] == "online fallback online:hat engaged (champion v1)"

        with Deployment(settings, dep) as serving:
            serving.start(timeout_s=30)
            serving.wait_for(lambda s: s.primary_version == "online:hat", timeout_s=20)
            assert serving.fallback_active and serving.champion_version == "v1"
            wait_for(lambda: serving.online_examples >= 300, 20, "the serving learner's warm start")
            served = [serving.predict({"x": x, "y": 0.0}) for x in (-0.8, -0.5, 0.5, 0.8)]
            assert [(p.model_version, p.role) for p in served] == [("online:hat", "primary")] * 4
            assert [p.label for p in served] == ["a", "a", "b", "b"]   # the learned rule, not v1's

            promoted = new_event(ev.MODEL_PROMOTED, deployment=dep, model_name="toy", model_version="v2",
                                 previous_version="v1", decided_by="manual", reason="retrained",
                                 expected_champion="v1", expected_state="challenger")
            producer.produce(topics.model_updates, ev.MODEL_PROMOTED, promoted, key=dep)
            producer.flush()
            serving.wait_for(lambda s: s.primary_version == "v2", timeout_s=20)
            assert not serving.fallback_active
            p = serving.predict({"x": -0.5, "y": 0.0})
            assert (p.model_version, p.role, p.label) == ("v2", "primary", "a")

    logged = {e.value["prediction_id"]: e.value["model_version"] for e in read_to_end(settings, topics.predictions)
              if e.value["deployment"] == dep}
    assert sorted(logged.values()) == ["online:hat"] * 4 + ["v2"]
    updates = [(e.event_type, e.value) for e in read_to_end(settings, topics.model_updates)
               if e.value["deployment"] == dep]
    assert len([u for u in updates if u[0] == ev.ONLINE_FALLBACK_SWITCHED]) == 1   # engaged once, never twice
    fb = deployment_status(settings, dep)["online_fallback"]
    assert not fb["active"] and fb["reason"] == "retired by ModelPromoted"
    fold = fold_events(updates)
    assert not fold.active(dep) and fold.engagements == {dep: 1} and fold.retirements == {dep: 1}


def log_pairs(client, dep, n, primary):
    """n labeled pairs: ``primary`` says "b" (wrong), the shadow v2 says "a" (right); truth "a"."""
    for _ in range(n):
        pid = client.log_prediction(dep, {"x": -0.5, "y": 0.0}, label="b", model_version=primary, latency_ms=1.0)
        client.log_prediction(dep, {"x": -0.5, "y": 0.0}, label="a", model_version="v2", role="shadow",
                              prediction_id=pid, latency_ms=1.0)
        client.log_feedback(pid, dep, label="a")
    client.flush()


@pytest.mark.slow
def test_while_the_fallback_serves_the_shadow_is_judged_against_it_not_the_replaced_champion(loop):
    settings, topics = loop
    dep = "fb2"
    setup(settings, dep, shadow="v2")
    produce_examples(settings, topics, dep, 300, seed=6)
    wait_for(lambda: switches(settings, topics, dep), 60, "OnlineFallbackSwitched", interval_s=0.2)

    def comparisons(primary):
        return [e.value for e in read_to_end(settings, topics.shadow_comparisons, timeout_s=10)
                if e.value["deployment"] == dep and e.value["primary_version"] == primary]

    with CtloopClient(settings) as client:
        # evidence against the replaced champion v1 (v2 far better): not a reason to promote while it is replaced
        log_pairs(client, dep, 60, "v1")
        wait_for(lambda: any(c["labeled_samples"] >= 60 for c in comparisons("v1")), 40,
                 "a comparison of v1 vs v2 on 60 labeled pairs", interval_s=0.2)
        log_pairs(client, dep, 60, "online:hat")     # v2 beats the fallback that serves
        promoted = wait_for(lambda: [e.value for e in read_to_end(settings, topics.model_updates, timeout_s=10)
                                     if e.event_type == ev.MODEL_PROMOTED and e.value["deployment"] == dep],
                            60, "ModelPromoted of v2", interval_s=0.2)
    p = promoted[0]
    assert (p["model_version"], p["previous_version"], p["expected_champion"], p["decided_by"]) == \
        ("v2", "v1", "v1", "policy")
    assert p["evidence"]["primary_served"] == "online:hat"   # decided on the comparison against the fallback
    updates = [(e.event_type, e.value) for e in read_to_end(settings, topics.model_updates)
               if e.value["deployment"] == dep]
    assert not fold_events(updates).active(dep)               # the promotion retired the fallback


def _examples_folded(port: int, dep: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f'ctloop_online_fallback_examples_total{{deployment="{dep}"}}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.slow
def test_a_new_owner_rebuilds_the_learner_and_its_window_from_the_recent_log(settings, topics):
    """25 champion-wrong pairs (under the 30 needed) on one worker, 5 more on the next: only a tracker
    rebuilt from the earlier records has the 30 pairs that engage the fallback."""
    dep = "fb3"
    setup(settings, dep)
    with running_processors(settings, stages=["processors.online_fallback"], timeout_s=60) as first:
        produce_examples(settings, topics, dep, 25, seed=7)
        wait_for(lambda: _examples_folded(first.ready["metrics_port"], dep) >= 25, 40, "25 examples folded")
    assert not switches(settings, topics, dep)
    with running_processors(settings, stages=["processors.online_fallback"], timeout_s=60) as second:
        produce_examples(settings, topics, dep, 5, seed=8)
        engaged = wait_for(lambda: switches(settings, topics, dep), 40, "OnlineFallbackSwitched", interval_s=0.2)
        log_text = open(second.log_path).read()
    assert int(engaged[0].value["evidence"]["window"]) == 30
    assert "tracker rebuilt from 25 examples" in log_text


def test_the_serving_feed_warm_starts_from_a_bounded_tail_then_follows(settings, topics):
    from streams.labeled_feed import LabeledExampleFeed

    dep = "feed"
    produce_examples(settings, topics, dep, 40, seed=9)
    with EventProducer(settings) as producer:     # another deployment's and a shadow example: not delivered
        other = labeled("other", 0.5, 0.5)
        shadow = {**labeled(dep, 0.5, 0.5), "role": "shadow"}
        for value in (other, shadow):
            producer.produce(topics.labeled_examples, ev.LABELED_EXAMPLE, value, key=value["prediction_id"])
    seen = []
    feed = LabeledExampleFeed(settings, dep, seen.append, warm_records=8).start()   # 2 records per partition
    try:
        wait_for(lambda: feed.caught_up.is_set(), 20, "the warm start")
        warm = len(seen)
        assert warm <= 8 and all(v["deployment"] == dep and v["role"] == "primary" for v in seen)
        produce_examples(settings, topics, dep, 5, seed=10)
        wait_for(lambda: len(seen) == warm + 5, 20, "5 examples followed")
    finally:
        feed.stop()
