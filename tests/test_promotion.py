"""Shadow comparison + promotion policy on the real (embedded) broker, with a real processor worker
subprocess. The "models" are simulated: the test logs primary and shadow predictions and feedback
through the SDK and decides which of them are right, so no training is needed.

One worker (stages shadow_comparison + promotion) serves every test of the module; each test uses
its own deployment name.
"""
from __future__ import annotations

import uuid

import pytest

from infra.settings import Settings
from streams import catalog as ev
from streams.consumer import read_to_end
from streams.sdk import CtloopClient
from streams.serde import new_event
from streams.topics import Topics, ensure_topics
from tests.helpers.processes import running_processors, wait_for

pytestmark = pytest.mark.timeout(120)

STAGES = ["processors.shadow_comparison", "processors.promotion"]


@pytest.fixture(scope="module")
def loop(kafka_bootstrap, tmp_path_factory):
    from confluent_kafka.admin import AdminClient

    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
                        default_partitions=4, data_dir=str(tmp_path_factory.mktemp("promotion") / "data"),
                        shadow_comparison_every=10, shadow_comparison_interval_s=0.5, rollback_window=30,
                        rollback_watch_windows=3, promotion_max_samples_factor=3.0)
    topics = Topics.from_settings(settings)
    ensure_topics(AdminClient({"bootstrap.servers": kafka_bootstrap}), topics)
    with running_processors(settings, stages=STAGES, timeout_s=60) as proc, CtloopClient(settings) as client:
        yield settings, topics, client, proc


def log_pairs(client, dep, pattern, *, primary="v1", shadow="v2"):
    """One labeled pair per (primary_correct, shadow_correct) item of ``pattern``; truth is "a"."""
    for p_ok, s_ok in pattern:
        pid = client.log_prediction(dep, {"x": 1.0}, label="a" if p_ok else "b", model_version=primary,
                                    latency_ms=1.0)
        if shadow is not None:
            client.log_prediction(dep, {"x": 1.0}, label="a" if s_ok else "b", model_version=shadow,
                                  role="shadow", prediction_id=pid, latency_ms=2.0)
        client.log_feedback(pid, dep, label="a")
    client.flush()


def events(settings, topic, dep, types=None):
    return [e for e in read_to_end(settings, topic, timeout_s=10)
            if e.value.get("deployment") == dep and (types is None or e.event_type in types)]


def wait_event(settings, topic, dep, predicate, what, timeout_s=90):
    try:
        return wait_for(lambda: next((e for e in events(settings, topic, dep) if predicate(e)), None), timeout_s, what,
                        interval_s=0.2)
    except TimeoutError as exc:  # say what the loop did see
        topics = Topics.from_settings(settings)
        seen = [(e.value["labeled_samples"], e.value["paired_samples"], e.value["mcnemar_pvalue"])
                for e in events(settings, topics.shadow_comparisons, dep)]
        updates = [(e.event_type, e.value) for e in events(settings, topics.model_updates, dep)]
        raise AssertionError(f"{exc}; comparisons (labeled, paired, p): {seen}; updates: {updates}") from None


def register(settings, dep, versions=("v1", "v2")):
    """ModelRegistered of each version (the first as champion): the stage folds the registry like every
    process, and a decision waits for the registration of the version it names."""
    from streams.producer import EventProducer

    with EventProducer(settings) as producer:
        for i, version in enumerate(versions):
            producer.produce(Topics.from_settings(settings).model_lifecycle, ev.MODEL_REGISTERED, new_event(
                ev.MODEL_REGISTERED, deployment=dep, model_name="m", model_version=version,
                alias="champion" if i == 0 else "challenger",
                metrics={}, artifact_uri=f"file:///nowhere/{version}.pt", artifact_sha256="0" * 64), key=dep)
            producer.flush()


def setup(client, dep, min_samples):
    register(client.settings, dep)
    client.setup_continuous_deployment(dep, promotion_threshold=0.05, min_samples=min_samples,
                                       significance_level=0.05, rollback_margin=0.05)
    client.set_shadow_model(dep, "v2")


def test_better_shadow_is_promoted_only_after_min_samples(loop):
    settings, topics, client, _ = loop
    dep = "better"
    setup(client, dep, min_samples=60)
    pattern = [(i % 2 == 0, True) for i in range(70)]  # primary 50 %, shadow 100 %
    log_pairs(client, dep, pattern[:59])
    comparison = wait_event(settings, topics.shadow_comparisons, dep, lambda e: e.value["labeled_samples"] == 59,
                            "a comparison of 59 labeled pairs")
    assert comparison.value["shadow_metrics"]["accuracy"] == 1.0
    assert comparison.value["primary_metrics"]["accuracy"] == pytest.approx(30 / 59)
    assert comparison.value["mcnemar_pvalue"] < 1e-6 and comparison.value["agreement_rate"] == pytest.approx(30 / 59)
    assert comparison.value["primary_latency_p50_ms"] == 1.0 and comparison.value["shadow_latency_p95_ms"] == 2.0
    assert events(settings, topics.model_updates, dep) == []  # significant, but below min_samples

    log_pairs(client, dep, pattern[59:])
    promoted = wait_event(settings, topics.model_updates, dep, lambda e: e.event_type == ev.MODEL_PROMOTED,
                          "ModelPromoted")
    v = promoted.value
    assert (v["model_version"], v["previous_version"], v["decided_by"]) == ("v2", "v1", "policy")
    assert int(v["evidence"]["labeled_samples"]) >= 60 and float(v["evidence"]["mcnemar_pvalue"]) < 0.05
    cleared = wait_event(settings, topics.deployments, dep, lambda e: e.value["change"] == "promotion_decided",
                         "shadow cleared")
    assert cleared.value["shadow_model_version"] is None
    assert [e.event_type for e in events(settings, topics.model_updates, dep)] == [ev.MODEL_PROMOTED]  # once


def test_worse_shadow_is_rejected(loop):
    settings, topics, client, _ = loop
    dep = "worse"
    setup(client, dep, min_samples=40)
    log_pairs(client, dep, [(True, i % 2 == 0) for i in range(50)])  # primary 100 %, shadow 50 %
    rejected = wait_event(settings, topics.model_updates, dep, lambda e: e.event_type == ev.CANDIDATE_REJECTED,
                          "CandidateRejected")
    v = rejected.value
    assert (v["model_version"], v["stage"], v["champion_version"]) == ("v2", "shadow", "v1")
    assert "worse" in v["reasons"][0] and v["metrics"]["accuracy"] < v["champion_metrics"]["accuracy"]
    assert not events(settings, topics.model_updates, dep, {ev.MODEL_PROMOTED})


def test_equal_models_are_not_promoted(loop):
    settings, topics, client, _ = loop
    dep = "noise"
    setup(client, dep, min_samples=40)
    # both 80 % right; they disagree on 20 % of the requests, half of those each way
    cycle = [(True, True)] * 3 + [(True, False)] + [(True, True)] * 4 + [(False, True)] + [(False, False)]
    log_pairs(client, dep, cycle * 13)  # 130 labeled pairs > the cap of 3 x 40
    rejected = wait_event(settings, topics.model_updates, dep, lambda e: e.event_type == ev.CANDIDATE_REJECTED,
                          "CandidateRejected at the cap")
    assert "not significantly better" in rejected.value["reasons"][0]
    comparisons = events(settings, topics.shadow_comparisons, dep)
    assert max(c.value["labeled_samples"] for c in comparisons) >= 120
    assert not events(settings, topics.model_updates, dep, {ev.MODEL_PROMOTED})


def test_degraded_champion_is_rolled_back(loop):
    settings, topics, client, _ = loop
    dep = "degrade"
    setup(client, dep, min_samples=60)
    pattern = [(i % 10 < 8, True) for i in range(60)]  # v1 80 %, v2 100 % in shadow
    log_pairs(client, dep, pattern)
    wait_event(settings, topics.model_updates, dep, lambda e: e.event_type == ev.MODEL_PROMOTED, "ModelPromoted")
    # v2 is now the champion and serves alone ... at 10 % on live traffic
    log_pairs(client, dep, [(i % 10 < 1, None) for i in range(40)], primary="v2", shadow=None)
    rolled = wait_event(settings, topics.model_updates, dep, lambda e: e.event_type == ev.MODEL_ROLLED_BACK,
                        "ModelRolledBack")
    v = rolled.value
    assert (v["from_version"], v["to_version"], v["decided_by"]) == ("v2", "v1", "policy")
    assert float(v["evidence"]["live_accuracy"]) < float(v["evidence"]["baseline_accuracy"]) - 0.05
    assert int(v["evidence"]["window"]) == 30
    assert len(events(settings, topics.model_updates, dep, {ev.MODEL_ROLLED_BACK})) == 1


def test_bad_records_on_the_shadow_topic_are_dead_lettered(loop):
    settings, topics, client, _ = loop
    client.producer.produce_raw(topics.shadow_predictions, b"not avro", b"k1")
    # a primary prediction written to the shadow topic by a misbehaving client
    record = new_event(ev.PREDICTION_LOGGED, prediction_id=str(uuid.uuid4()), deployment="bad", model_name="",
                       model_version="v1", role="primary", features={"x": 1.0}, label="a")
    client.producer.produce(topics.shadow_predictions, ev.PREDICTION_LOGGED, record, key=b"k2")
    client.flush()

    def dead_letters():
        found = [e.value for e in read_to_end(settings, topics.dead_letters, timeout_s=10)
                 if e.value["component"] == "shadow_comparison"]
        return found if len(found) >= 2 else None

    found = wait_for(dead_letters, 30, "two dead letters from shadow_comparison", interval_s=0.2)
    reasons = sorted(d["reason"] for d in found)
    assert any("unknown framing" in r for r in reasons) and any("does not belong" in r for r in reasons)
    assert {d["source_topic"] for d in found} == {topics.shadow_predictions}


def test_enabling_continuous_deployment_later_judges_the_evidence_already_in(loop):
    settings, topics, client, _ = loop
    dep = "later"
    register(settings, dep)
    client.set_shadow_model(dep, "v2")  # continuous deployment still off
    log_pairs(client, dep, [(i % 2 == 0, True) for i in range(50)])
    wait_event(settings, topics.shadow_comparisons, dep, lambda e: e.value["labeled_samples"] == 50,
               "a comparison of 50 labeled pairs")
    assert events(settings, topics.model_updates, dep) == []  # off: no decision
    client.setup_continuous_deployment(dep, min_samples=40)
    promoted = wait_event(settings, topics.model_updates, dep, lambda e: e.event_type == ev.MODEL_PROMOTED,
                          "ModelPromoted after enabling")
    assert promoted.value["evidence"]["labeled_samples"] == "50"


def test_a_former_champion_put_back_in_shadow_is_decided_again(loop):
    """Issue 17.3: decisions are per shadow *assignment* (the deployments revision that set it), so a
    version decided once (promoted, later replaced) and put in shadow again is judged again."""
    settings, topics, client, _ = loop
    dep = "again"
    setup(client, dep, min_samples=30)
    log_pairs(client, dep, [(i % 10 < 6, True) for i in range(30)])        # v2 better than v1
    wait_event(settings, topics.model_updates, dep, lambda e: e.event_type == ev.MODEL_PROMOTED, "v2 promoted")
    client.set_shadow_model(dep, "v1")
    log_pairs(client, dep, [(i % 10 < 6, True) for i in range(30)], primary="v2", shadow="v1")
    wait_event(settings, topics.model_updates, dep,
               lambda e: e.event_type == ev.MODEL_PROMOTED and e.value["model_version"] == "v1", "v1 promoted back")
    client.set_shadow_model(dep, "v2")                                      # promoted once, in shadow again
    log_pairs(client, dep, [(i % 10 < 6, True) for i in range(30)])
    wait_event(settings, topics.model_updates, dep,
               lambda e: e.event_type == ev.MODEL_PROMOTED and e.value["model_version"] == "v2"
               and e.value["expected_champion"] == "v1" and e.value["previous_version"] == "v1"
               and len(events(settings, topics.model_updates, dep)) == 3, "v2 promoted a second time")
    promoted = events(settings, topics.model_updates, dep, {ev.MODEL_PROMOTED})
    assert [e.value["model_version"] for e in promoted] == ["v2", "v1", "v2"]
    revisions = [e.value["shadow_revision"] for e in promoted]
    assert len(set(revisions)) == 3 and None not in revisions
    wait_for(lambda: client.deployments.all().get(dep, {}).get("shadow_model_version", "v2") is None, 20,
             "the shadow cleared after the last decision")


def test_a_decision_whose_shadow_was_not_cleared_is_cleared_on_restart(loop):
    """A worker that died between publishing a decision and clearing the shadow: the next one (here the
    same worker seeing the log) clears the decided assignment's shadow from what the log shows."""
    from streams.deployments import DeploymentSettingsClient
    from streams.producer import EventProducer

    settings, topics, client, _ = loop
    dep = "halfdone"
    register(settings, dep)
    config = client.set_shadow_model(dep, "v2")
    with EventProducer(settings) as producer:   # the decision the dead worker published, nothing after it
        producer.produce(topics.model_updates, ev.MODEL_PROMOTED, new_event(
            ev.MODEL_PROMOTED, deployment=dep, model_version="v2", previous_version="v1", decided_by="policy",
            reason="better", expected_champion="v1", expected_state="challenger",
            shadow_revision=config["revision"]), key=dep)
    reader = DeploymentSettingsClient(settings)
    try:
        wait_for(lambda: reader.all().get(dep, {}).get("shadow_model_version", "v2") is None, 30,
                 "the decided shadow cleared")
        assert reader.all()[dep]["change"] == "promotion_decided"
    finally:
        reader.close()


def test_evidence_of_an_earlier_assignment_is_not_judged_again(loop):
    """Stale evidence: v2 beats v1 in shadow and is promoted; the operator rolls back to v1 and puts v2 in
    shadow again (a new assignment) where both are right. 5 fresh pairs (min_samples 30) must not promote
    v2 "on 45 labeled pairs": the 40 earlier ones belong to the earlier assignment."""
    from infra.commands.serving import deployment_status, manual_rollback

    settings, topics, client, _ = loop
    dep = "stale"
    setup(client, dep, min_samples=30)
    log_pairs(client, dep, [(i % 10 < 6, True) for i in range(40)])        # v1 60 %, v2 100 %
    wait_event(settings, topics.model_updates, dep, lambda e: e.event_type == ev.MODEL_PROMOTED, "v2 promoted")
    wait_for(lambda: client.deployments.all().get(dep, {}).get("shadow_model_version", "v2") is None, 20,
             "the shadow cleared after the promotion")
    manual_rollback(settings, dep, "v1", reason="operator prefers v1", force=True)  # the artifacts are fake
    revision = client.set_shadow_model(dep, "v2")["revision"]
    log_pairs(client, dep, [(True, True)] * 5)                               # equal on the new assignment
    fresh = wait_event(settings, topics.shadow_comparisons, dep, lambda e: e.value.get("shadow_revision") == revision
                       and e.value["labeled_samples"] == 5, "a comparison of the 5 fresh pairs")
    assert fresh.value["primary_version"] == "v1" and fresh.value["mcnemar_pvalue"] == 1.0
    earlier = [e.value for e in events(settings, topics.shadow_comparisons, dep)
               if e.value["shadow_revision"] != revision]
    assert earlier and all(c["shadow_revision"] < revision for c in earlier)
    status = deployment_status(settings, dep)
    assert (status["champion"], status["shadow"], status["shadow_revision"]) == ("v1", "v2", revision)
    assert status["policy_waiting"] == "too few labeled pairs: 5 of 30"
    # a barrier: 30 pairs where v2 is wrong. The stage judges this deployment's comparisons in order, so
    # the rejection they bring shows that the 5-pair comparison before them was judged and did not promote
    log_pairs(client, dep, [(True, False)] * 30)
    wait_event(settings, topics.model_updates, dep, lambda e: e.event_type == ev.CANDIDATE_REJECTED, "v2 rejected")
    decisions = [(e.event_type, e.value.get("model_version") or e.value.get("to_version"))
                 for e in events(settings, topics.model_updates, dep)]
    assert decisions == [(ev.MODEL_PROMOTED, "v2"), (ev.MODEL_ROLLED_BACK, "v1"), (ev.CANDIDATE_REJECTED, "v2")]
    rejected = events(settings, topics.model_updates, dep, {ev.CANDIDATE_REJECTED})[0].value
    assert rejected["shadow_revision"] == revision and "worse" in rejected["reasons"][0]


def test_fast_path_promotes_over_a_collapsed_champion_before_min_samples(loop):
    """Issue 12: the champion registered at 0.95 holdout accuracy serves at ~50 % after a drift; a shadow
    right on every pair is promoted on its first early look (>= 30 labeled pairs), long before the 400 of
    the regular path; the decision says "fast path"."""
    from streams.producer import EventProducer

    settings, topics, client, _ = loop
    dep = "collapsed"
    with EventProducer(settings) as producer:
        for version, alias, accuracy in (("v1", "champion", 0.95), ("v2", "challenger", 0.97)):
            producer.produce(topics.model_lifecycle, ev.MODEL_REGISTERED, new_event(
                ev.MODEL_REGISTERED, deployment=dep, model_name="m", model_version=version, alias=alias,
                metrics={"accuracy": accuracy}, artifact_uri=f"file:///nowhere/{version}.pt",
                artifact_sha256="0" * 64), key=dep)
            producer.flush()
    client.setup_continuous_deployment(dep, promotion_threshold=0.05, min_samples=400, significance_level=0.05,
                                       rollback_margin=0.05, fast_promotion_min_samples=30)
    client.set_shadow_model(dep, "v2")
    log_pairs(client, dep, [(i % 2 == 0, True) for i in range(40)])  # primary 50 %, shadow 100 %
    promoted = wait_event(settings, topics.model_updates, dep, lambda e: e.event_type == ev.MODEL_PROMOTED,
                          "ModelPromoted on the fast path")
    v = promoted.value
    assert v["reason"].startswith("fast path: the champion has collapsed"), v["reason"]
    assert v["evidence"]["path"] == "fast" and 30 <= int(v["evidence"]["labeled_samples"]) < 400
    assert v["evidence"]["champion_registered_accuracy"] == "0.950000"
