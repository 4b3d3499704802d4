"""The online fallback's pure logic: the fold rule (streams/fallback_fold.py), the tracker and the
engage / retire policy (processors/online_fallback.py), the online learner (streams/online_learner.py)."""
from __future__ import annotations

import random

import pytest

from processors.online_fallback import FallbackPolicy, FallbackTracker, example_item, switch_record
from streams import catalog as ev
from streams.fallback_fold import FallbackFold, fold_events, is_online_version, online_version
from streams.serde import new_event
from streams.online_learner import OnlineLearner


def switch(dep, active, expected, learner="arf"):
    return new_event(ev.ONLINE_FALLBACK_SWITCHED, deployment=dep, active=active, learner=learner,
                     model_version=online_version(learner), champion_version="v1", reason="test",
                     expected_decision=expected)


def promoted(dep, version, previous):
    return new_event(ev.MODEL_PROMOTED, deployment=dep, model_version=version, previous_version=previous,
                     decided_by="policy", reason="better", expected_champion=previous)


def rolled_back(dep, from_version, to_version):
    return new_event(ev.MODEL_ROLLED_BACK, deployment=dep, from_version=from_version, to_version=to_version,
                     decided_by="policy", reason="worse")


# -- the fold rule ------------------------------------------------------------------------------------
def test_the_latest_decision_in_log_order_says_whether_the_fallback_serves():
    fold = FallbackFold()
    assert not fold.active("d") and fold.latest_decision("d") is None
    p1 = promoted("d", "v1", None)
    assert fold.apply(ev.MODEL_PROMOTED, p1) and not fold.active("d")
    on = switch("d", True, p1["event_id"])
    assert fold.apply(ev.ONLINE_FALLBACK_SWITCHED, on) and fold.active("d")
    assert fold.state("d").model_version == "online:arf" and fold.latest_decision("d") == on["event_id"]
    assert fold.apply(ev.MODEL_PROMOTED, promoted("d", "v2", "v1")) and not fold.active("d")  # retired
    assert (fold.engagements, fold.retirements) == ({"d": 1}, {"d": 1})
    assert not fold.active("other")


def test_a_rollback_retires_the_fallback_and_a_switch_off_too():
    events = []
    on = switch("d", True, None)
    events.append((ev.ONLINE_FALLBACK_SWITCHED, on))
    rb = rolled_back("d", "v2", "v1")
    events.append((ev.MODEL_ROLLED_BACK, rb))
    assert not fold_events(events).active("d")
    on2 = switch("d", True, rb["event_id"])
    off = switch("d", False, on2["event_id"])
    fold = fold_events(events + [(ev.ONLINE_FALLBACK_SWITCHED, on2)])
    assert fold.active("d")
    assert fold.apply(ev.ONLINE_FALLBACK_SWITCHED, off) and not fold.active("d")
    assert fold.retirements == {"d": 2} and fold.engagements == {"d": 2}


def test_a_stale_or_duplicate_switch_is_refused_and_never_flips_twice():
    fold = FallbackFold()
    first = switch("d", True, None)            # two owners during a rebalance decide from the same log
    second = switch("d", True, None)
    assert fold.apply(ev.ONLINE_FALLBACK_SWITCHED, first)
    assert not fold.apply(ev.ONLINE_FALLBACK_SWITCHED, second)
    off = switch("d", False, first["event_id"])
    assert fold.apply(ev.ONLINE_FALLBACK_SWITCHED, off) and not fold.active("d")
    late = switch("d", True, None)             # a replayed decision that expected the empty log
    assert not fold.apply(ev.ONLINE_FALLBACK_SWITCHED, late) and not fold.active("d")
    assert not fold.apply(ev.ONLINE_FALLBACK_SWITCHED, first)   # the same event again (at-least-once)
    assert [r["event_id"] for r in fold.refused] == [second["event_id"], late["event_id"]]
    assert fold.engagements == {"d": 1} and fold.retirements == {"d": 1}


def test_deployments_fold_apart_and_other_events_are_ignored():
    fold = FallbackFold()
    assert fold.apply(ev.ONLINE_FALLBACK_SWITCHED, switch("a", True, None))
    assert not fold.apply(ev.CANDIDATE_REJECTED, {"deployment": "a", "event_id": "x"})
    assert fold.active("a") and not fold.active("b")
    assert is_online_version("online:hat") and not is_online_version("v1") and not is_online_version(None)


# -- the tracker and the policy ------------------------------------------------------------------------
CONFIG = {"online_fallback": "hat", "continuous_deployment_enabled": True, "fast_promotion_min_samples": 30,
          "promotion_threshold": 0.05, "significance_level": 0.05}


def rule(x):
    return "a" if x["x"] > x["y"] else "b"


def feed(tracker, n, champion_right, *, seed=1, version="v1", role="primary", champion="v1"):
    rnd = random.Random(seed)
    for _ in range(n):
        x = {"x": rnd.random(), "y": rnd.random()}
        label = rule(x)
        served = label if champion_right(rnd) else ("b" if label == "a" else "a")
        tracker.add(x, label, served, version, role, champion)


def test_engages_when_the_learner_is_significantly_better_than_a_collapsed_champion():
    tracker = FallbackTracker("hat", window=200)
    feed(tracker, 400, lambda r: r.random() < 0.4)           # champion right 40 %; the rule is learnable
    e = tracker.evidence()
    assert e["n"] == 200 and e["learner_accuracy"] > 0.85 and e["champion_accuracy"] < 0.55
    decision = FallbackPolicy().engage(CONFIG, tracker, active=False)
    assert decision is not None and decision.active
    assert float(decision.evidence["mcnemar_pvalue"]) < 0.05 and decision.evidence["window"] == "200"
    assert "beats champion v1" in decision.reason
    record = switch_record(ev.default_catalog(), "d", decision, learner="hat", champion="v1", expected_decision="x")
    assert (record["model_version"], record["expected_decision"], record["active"]) == ("online:hat", "x", True)


def test_a_collapsed_champion_hands_over_after_the_minimum_of_post_change_pairs():
    """Abrupt drift: 170 good pairs, then the champion collapses. The whole-window rule needs the learner
    ahead by 5 points over 200 pairs with McNemar's p < 0.05; the collapse rule (champion significantly
    below its registered accuracy on the last 30 pairs, learner ahead on them) engages far sooner. A
    champion with no registered accuracy, or one not below it by rollback_margin, is judged by the window."""
    config = {**CONFIG, "rollback_margin": 0.1}
    tracker = FallbackTracker("hat", window=200)
    feed(tracker, 600, lambda r: r.random() < 0.97)           # the learner learns the rule; the champion is good
    policy = FallbackPolicy()
    engaged_at = None
    rnd = random.Random(5)
    for k in range(1, 200):
        x = {"x": rnd.random(), "y": rnd.random()}
        label = rule(x)
        tracker.add(x, label, "b" if label == "a" else "a", "v1", "primary", "v1")   # collapsed: always wrong
        window_only = policy.engage(config, tracker, active=False)
        decision = policy.engage(config, tracker, active=False, champion_accuracy=0.96)
        if window_only is not None:
            assert decision is not None                        # the collapse rule never engages later
        if decision is not None and engaged_at is None:
            engaged_at, first = k, decision
            assert window_only is None                         # the window rule alone would still wait here
    assert engaged_at is not None and engaged_at <= 15
    assert first.evidence["rule"] == "collapse" and first.evidence["window"] == "30"
    assert float(first.evidence["champion_collapse_pvalue"]) < 0.05
    assert first.evidence["champion_registered_accuracy"] == "0.960000" and "collapsed" in first.reason
    assert policy.engage(config, tracker, active=False, champion_accuracy=None) is not None   # the window rule, later


def test_the_collapse_rule_does_not_engage_on_a_stationary_champion_below_its_holdout_figure():
    """It looks on every example: 2,000 stationary pairs of a champion right 95 % of the time, registered
    at 99 % (an optimistic holdout), beside a learner a few points better (not enough for the window
    rule), must not engage it once: a per-look level of alpha (or the registered figure as the only
    baseline) would, on short unlucky stretches."""
    config = {**CONFIG, "rollback_margin": 0.1, "promotion_threshold": 0.08}
    tracker = FallbackTracker("hat", window=200)
    policy = FallbackPolicy()
    rnd = random.Random(11)
    for _ in range(2000):
        x = {"x": rnd.random(), "y": rnd.random()}
        label = rule(x)
        served = label if rnd.random() < 0.95 else ("b" if label == "a" else "a")
        tracker.add(x, label, served, "v1", "primary", "v1")
        assert policy.engage(config, tracker, active=False, champion_accuracy=0.99) is None


def test_does_not_engage_on_noise_without_continuous_deployment_or_when_already_active():
    tracker = FallbackTracker("hat", window=200)
    feed(tracker, 400, lambda r: r.random() < 0.97)          # a good champion: the learner is not better
    policy = FallbackPolicy()
    assert policy.engage(CONFIG, tracker, active=False) is None
    bad = FallbackTracker("hat", window=200)
    feed(bad, 400, lambda r: r.random() < 0.4)
    assert policy.engage({**CONFIG, "continuous_deployment_enabled": False}, bad, active=False) is None
    assert policy.engage({**CONFIG, "online_fallback": ""}, bad, active=False) is None
    assert policy.engage(CONFIG, bad, active=True) is None


def test_waits_for_the_minimum_of_pairs_and_counts_only_the_champions_primary_predictions():
    tracker = FallbackTracker("hat", window=200)
    feed(tracker, 300, lambda r: False, version="online:hat")  # served by the learner: no pairs
    feed(tracker, 300, lambda r: False, role="canary")
    feed(tracker, 300, lambda r: False, role="shadow")         # ignored altogether
    assert tracker.evidence()["n"] == 0 and tracker.examples == 600
    feed(tracker, 29, lambda r: False)                          # champion always wrong, 29 of 30 pairs
    policy = FallbackPolicy()
    assert policy.engage(CONFIG, tracker, active=False) is None
    feed(tracker, 1, lambda r: False, seed=9)
    assert policy.engage(CONFIG, tracker, active=False) is not None
    feed(tracker, 5, lambda r: False, champion="v2", version="v2")   # a new champion restarts the window
    assert tracker.evidence()["n"] == 5


def test_retires_when_the_setting_is_turned_off_or_continuous_deployment_disabled():
    policy = FallbackPolicy()
    assert policy.retire({**CONFIG, "online_fallback": ""}, active=True).reason == "online_fallback turned off"
    assert not policy.retire({**CONFIG, "continuous_deployment_enabled": False}, active=True).active
    assert policy.retire(CONFIG, active=True) is None and policy.retire({}, active=False) is None


def test_forwarded_items_leave_shadow_examples_out():
    value = {"role": "primary", "features": {"x": 1.0}, "label": "a", "predicted_label": "b", "model_version": "v1"}
    assert example_item(ev.LABELED_EXAMPLE, value) == [{"x": 1.0}, "a", "b", "v1", "primary"]
    assert example_item(ev.LABELED_EXAMPLE, {**value, "role": "shadow"}) is None


@pytest.mark.parametrize("name", ["arf", "hat"])
def test_online_learner_learns_a_rule_and_names_its_version(name):
    learner = OnlineLearner(name, seed=3)
    assert learner.version == f"online:{name}" and learner.predict({"x": 0.5, "y": 0.1}) == (None, {})
    rnd = random.Random(0)
    hits = 0
    for i in range(600):
        x = {"x": rnd.random(), "y": rnd.random()}
        hits += (learner.prequential(x, rule(x)) == rule(x)) if i >= 300 else 0
    assert hits / 300 > 0.85
    label, proba = learner.predict({"x": 0.9, "y": 0.1, "z": float("nan")})
    assert label == "a" and abs(sum(proba.values()) - 1) < 1e-6
    with pytest.raises(ValueError, match="unknown online learner"):
        OnlineLearner("svm")


def test_demo_summary_counts_engagements_retirements_and_predictions_served_by_the_fallback():
    from infra.demo.summary import LoopEvents, summarise

    p1 = promoted("d", "v1", None)
    on = switch("d", True, p1["event_id"])
    dup = switch("d", True, p1["event_id"])          # refused: on is the latest by then
    p2 = promoted("d", "v2", "v1")                    # retires it
    on2 = switch("d", True, p2["event_id"])
    updates = [(t, v, 0, i) for i, (t, v) in enumerate([(ev.MODEL_PROMOTED, p1), (ev.ONLINE_FALLBACK_SWITCHED, on),
                                                        (ev.ONLINE_FALLBACK_SWITCHED, dup), (ev.MODEL_PROMOTED, p2),
                                                        (ev.ONLINE_FALLBACK_SWITCHED, on2)])]
    preds = [(ev.PREDICTION_LOGGED, {"deployment": "d", "prediction_id": f"p{i}", "role": "primary",
                                     "model_version": "online:arf" if i % 2 else "v1"}, 0, i) for i in range(6)]
    s = summarise(LoopEvents(predictions=preds, updates=updates), "d")
    assert (s["fallback_engagements"], s["fallback_retirements"], s["fallback_switches_refused"]) == (2, 1, 1)
    assert s["fallback_active_at_end"] and s["fallback_predictions"] == 3


def test_status_explains_that_the_shadow_is_judged_against_a_serving_fallback():
    from infra.commands.serving import policy_waiting

    config = {"continuous_deployment_enabled": True, "shadow_model_version": "v2", "promotion_min_samples": 100,
              "promotion_threshold": 0.05, "significance_level": 0.05}
    comparison = {"deployment": "d", "primary_version": "v1", "shadow_version": "v2", "shadow_revision": 3,
                  "labeled_samples": 40, "primary_metrics": {"accuracy": 0.4}, "shadow_metrics": {"accuracy": 0.9},
                  "mcnemar_pvalue": 0.001}
    why = policy_waiting(config, "v1", comparison, 3, fallback_version="online:arf")
    assert why.startswith("the online fallback online:arf serves in place of the champion v1")
    against = {**comparison, "primary_version": "online:arf"}
    assert policy_waiting(config, "v1", against, 3, fallback_version="online:arf").startswith(
        "too few labeled pairs: 40 of 100")                   # the policy's own reason, on the fallback's comparison
    assert "not the champion v1" in policy_waiting(config, "v1", against, 3)   # not serving: not judged
