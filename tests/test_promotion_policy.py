"""Pure logic of shadow comparison, promotion and rollback (processors/shadow_join.py, shadow_stats.py,
promotion_policy.py, rollback_watch.py, statistics.py): no Kafka needed."""
from __future__ import annotations

import random

import pytest

from processors.promotion_policy import PromotionPolicy
from processors.rollback_watch import RollbackWatch
from processors.shadow_join import PredictionJoin
from processors.shadow_stats import ComparisonAggregator, ShadowAssignments
from processors.statistics import classification_metrics, mcnemar_pvalue, percentile

CD = {"continuous_deployment_enabled": True, "promotion_min_samples": 100, "promotion_threshold": 0.05,
      "promotion_metric": "accuracy", "significance_level": 0.05, "rollback_margin": 0.05}


def pred(pid, version, label, role="primary", latency=1.0, t=1000, dep="d"):
    return {"prediction_id": pid, "deployment": dep, "model_version": version, "label": label, "role": role,
            "latency_ms": latency, "event_time": t}


def fb(pid, label=None, ftype="label", verdict=None, dep="d"):
    return {"prediction_id": pid, "deployment": dep, "feedback_type": ftype, "label": label, "verdict": verdict}


def test_metrics_and_mcnemar_match_hand_computation():
    confusion = {("a", "a"): 3, ("a", "b"): 1, ("b", "b"): 4, ("b", "a"): 2}
    m = classification_metrics(confusion)
    assert m["accuracy"] == pytest.approx(7 / 10)
    # precision a = 3/5, b = 4/5 ; recall a = 3/4, b = 4/6
    assert m["precision"] == pytest.approx((3 / 5 + 4 / 5) / 2)
    assert m["recall"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    f1a, f1b = 2 * .6 * .75 / (1.35), 2 * .8 * (4 / 6) / (.8 + 4 / 6)
    assert m["f1"] == pytest.approx((f1a + f1b) / 2)
    assert mcnemar_pvalue(0, 0) == 1.0
    assert mcnemar_pvalue(5, 5) == pytest.approx(1.0)
    assert mcnemar_pvalue(0, 10) == pytest.approx(2 * 0.5 ** 10)
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([], 95) == 0.0


def test_join_in_any_order_emits_pair_labeled_pair_and_primary_once():
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]):
        join = PredictionJoin()
        steps = [lambda: join.on_prediction(pred("p", "v1", "a", latency=2.0)),
                 lambda: join.on_prediction(pred("p", "v2", "b", role="shadow", latency=3.0)),
                 lambda: join.on_feedback(fb("p", "b"))]
        out = [o for i in order for o in steps[i]()]
        kinds = sorted(o["kind"] for o in out)
        assert kinds == ["labeled_pair", "pair", "primary"], order
        labeled = next(o for o in out if o["kind"] == "labeled_pair")
        assert (labeled["truth"], labeled["primary_label"], labeled["shadow_label"]) == ("b", "a", "b")
        assert next(o for o in out if o["kind"] == "primary")["correct"] is False
        # a correction or a duplicate after the fact changes nothing
        assert join.on_feedback(fb("p", "a", ftype="correction")) == []
        assert join.on_prediction(pred("p", "v2", "b", role="shadow")) == []


def test_join_review_verdicts_and_canary():
    join = PredictionJoin()
    join.on_feedback(fb("r", ftype="review", verdict="correct"))  # before the prediction
    out = join.on_prediction(pred("r", "v1", "a"))
    assert out == [{"kind": "primary", "deployment": "d", "version": "v1", "role": "primary", "correct": True,
                    "time": 1000}]
    join.on_prediction(pred("x", "v1", "a"))
    out = join.on_feedback(fb("x", ftype="review", verdict="incorrect"))
    assert [o["correct"] for o in out] == [False]
    out = join.on_prediction(pred("c", "v2", "a", role="canary")) + join.on_feedback(fb("c", "a"))
    assert [(o["kind"], o["role"], o["correct"]) for o in out] == [("primary", "canary", True)]


def test_join_is_bounded():
    join = PredictionJoin(max_entries=10)
    for i in range(25):
        join.on_prediction(pred(f"p{i}", "v1", "a"))
    assert len(join) == 10 and join.evicted == 15


def feed(agg, n, p_correct, s_correct, rng, now=0.0, pv="v1", sv="v2"):
    out = []
    for i in range(n):
        truth = rng.choice("ab")
        other = "b" if truth == "a" else "a"
        p = truth if rng.random() < p_correct else other
        s = truth if rng.random() < s_correct else other
        out += agg.add({"kind": "pair", "deployment": "d", "primary_version": pv, "shadow_version": sv,
                        "agree": p == s, "primary_latency_ms": 1.0, "shadow_latency_ms": 2.0}, now)
        out += agg.add({"kind": "labeled_pair", "deployment": "d", "primary_version": pv, "shadow_version": sv,
                        "truth": truth, "primary_label": p, "shadow_label": s}, now)
    return out


def test_aggregator_rate_limits_by_count_and_time():
    agg = ComparisonAggregator(every=50, interval_s=5.0)
    out = feed(agg, 120, 0.8, 0.9, random.Random(1))
    assert [c["labeled_samples"] for c in out] == [50, 100]
    assert agg.due(now_s=1.0) == []           # changed, but not for 5 s
    late = agg.due(now_s=6.0)
    assert [c["labeled_samples"] for c in late] == [120] and agg.due(now_s=20.0) == []
    c = late[0]
    assert c["paired_samples"] == 120 and 0 < c["agreement_rate"] < 1 and c["shadow_latency_p95_ms"] == 2.0
    assert set(c["primary_metrics"]) == {"accuracy", "precision", "recall", "f1"}


def joined(join, pid, p_ok, s_ok, *, feedback=True, pv="v1", sv="v2"):
    """The outcomes of one primary + shadow prediction (truth "a"), with or without its feedback."""
    out = join.on_prediction(pred(pid, pv, "a" if p_ok else "b"))
    out += join.on_prediction(pred(pid, sv, "a" if s_ok else "b", role="shadow"))
    return out + (join.on_feedback(fb(pid, "a")) if feedback else [])


def test_evidence_belongs_to_one_shadow_assignment():
    """Stale evidence (issue 17.3 follow-up): v2 beats v1 in shadow (assignment revision 1) and is
    promoted; v1 is back as champion and v2 in shadow again (revision 3): the earlier pairs, and the
    late feedback of predictions shadowed under revision 1, are not evidence for revision 3."""
    join, agg, policy = PredictionJoin(), ComparisonAggregator(every=10 ** 9, interval_s=0.0), PromotionPolicy(3.0)
    config = dict(CD, promotion_min_samples=30)
    folds = ShadowAssignments()
    agg.assign(*folds.apply({"deployment": "d", "revision": 1, "shadow_model_version": "v2"}))
    for i in range(40):
        [agg.add(o, 0.0) for o in joined(join, f"a{i}", i % 10 < 6, True)]
    for i in range(10):  # shadowed under revision 1, feedback not in yet
        [agg.add(o, 0.0) for o in joined(join, f"late{i}", False, True, feedback=False)]
    first = agg.due(1.0)
    assert [(c["shadow_revision"], c["labeled_samples"]) for c in first] == [(1, 40)]
    assert policy.decide(config, first[0]).action == "promote"

    # promotion clears the shadow (revision 2), the operator sets v2 again (revision 3): a new assignment
    assert folds.apply({"deployment": "d", "revision": 2, "shadow_model_version": None}) == ("d", None, 2)
    agg.assign("d", None, 2)
    assert folds.apply({"deployment": "d", "revision": 3, "shadow_model_version": "v2"}) == ("d", "v2", 3)
    assert folds.apply({"deployment": "d", "revision": 4, "shadow_model_version": "v2"}) is None  # same one
    agg.assign("d", "v2", 3)
    assert agg.due(2.0) == []  # nothing counted for revision 3 yet
    for i in range(10):  # the late feedback of revision 1's predictions: v2 right, v1 wrong
        [agg.add(o, 3.0) for o in join.on_feedback(fb(f"late{i}", "a"))]
    for i in range(5):  # fresh pairs, both right
        [agg.add(o, 3.0) for o in joined(join, f"b{i}", True, True)]
    fresh = agg.due(10.0)
    assert [(c["shadow_revision"], c["labeled_samples"], c["paired_samples"]) for c in fresh] == [(3, 5, 5)]
    assert fresh[0]["mcnemar_pvalue"] == 1.0
    assert policy.decide(config, fresh[0]) is None
    assert policy.waiting_reason(config, fresh[0]) == "too few labeled pairs: 5 of 30"
    # equal models past min_samples: still waiting (then rejected at the cap), and it says why
    for i in range(30):
        [agg.add(o, 11.0) for o in joined(join, f"c{i}", True, True)]
    equal = agg.due(30.0)[0]
    assert equal["labeled_samples"] == 35 and policy.decide(config, equal) is None
    assert "no significant difference yet on 35 labeled pairs" in policy.waiting_reason(config, equal)


def test_outcomes_of_a_shadow_not_assigned_count_apart():
    agg = ComparisonAggregator(every=10 ** 9, interval_s=0.0)
    agg.assign("d", "v3", 5)
    out = feed(agg, 20, 0.5, 1.0, random.Random(2))  # v2 outcomes (and old ones without prediction ids)
    assert out == [] and [c["shadow_revision"] for c in agg.due(1.0)] == [None]
    agg.assign("d", "v2", 6)  # a new assignment drops what came before it
    assert agg.stats == {} and agg.due(2.0) == []
    feed(agg, 3, 1.0, 1.0, random.Random(3))
    assert [(c["shadow_revision"], c["labeled_samples"]) for c in agg.due(3.0)] == [(6, 3)]


def comparison_of(n, p_correct, s_correct, seed):
    agg = ComparisonAggregator(every=10 ** 9)
    feed(agg, n, p_correct, s_correct, random.Random(seed))
    return agg.due(now_s=10 ** 6)[0]


def test_policy_promotes_better_only_after_min_samples():
    policy = PromotionPolicy()
    assert policy.decide(CD, comparison_of(99, 0.6, 0.95, 2)) is None           # below min_samples
    decision = policy.decide(CD, comparison_of(100, 0.6, 0.95, 2))
    assert decision.action == "promote" and float(decision.evidence["mcnemar_pvalue"]) < 0.05
    assert policy.decide({**CD, "continuous_deployment_enabled": False}, comparison_of(100, 0.6, 0.95, 2)) is None


def test_policy_rejects_worse_and_never_promotes_noise():
    policy = PromotionPolicy(max_samples_factor=3)
    assert policy.decide(CD, comparison_of(150, 0.9, 0.6, 3)).action == "reject"
    # equal models: over many seeds, never promoted; rejected only at the cap
    for seed in range(30):
        for n in (100, 150, 250):
            d = policy.decide(CD, comparison_of(n, 0.8, 0.8, seed))
            assert d is None or d.action == "reject", (seed, n, d)
    capped = policy.decide(CD, comparison_of(300, 0.8, 0.8, 4))
    assert capped.action == "reject" and "not significantly better" in capped.reason


def test_rollback_watch_rolls_back_a_degraded_champion_once():
    watch = RollbackWatch(window=50, watch_windows=3)
    rng = random.Random(5)
    for i in range(200):
        watch.add_outcome({"kind": "primary", "deployment": "d", "version": "v1", "correct": rng.random() < 0.9,
                           "time": 1000 + i})
    w = watch.on_promoted("d", "v2", "v1", promoted_ms=5000)
    assert w is not None and 0.8 < w.baseline < 1.0
    decisions = []
    for i in range(120):
        watch.add_outcome({"kind": "primary", "deployment": "d", "version": "v2", "correct": rng.random() < 0.5,
                           "time": 6000 + i})
        decisions.append(watch.check("d", CD))
    made = [d for d in decisions if d is not None]
    assert len(made) == 1 and made[0].action == "rollback" and made[0].evidence["to_version"] == "v1"
    assert decisions.index(made[0]) == 49  # judged at the first complete window


def test_rollback_watch_keeps_a_good_champion_and_stops_watching():
    watch = RollbackWatch(window=50, watch_windows=2)
    rng = random.Random(6)
    watch.on_promoted("d", "v2", "v1", promoted_ms=0, evidence={"primary_accuracy": "0.80"})
    for i in range(200):
        watch.add_outcome({"kind": "primary", "deployment": "d", "version": "v2", "correct": rng.random() < 0.85,
                           "time": 10 + i})
        assert watch.check("d", CD) is None
    assert "d" not in watch.watches  # confirmed after 2 windows


# -- fast path (issue 12) ----------------------------------------------------------------------------
FAST = dict(CD, promotion_min_samples=200, fast_promotion_min_samples=30, promotion_threshold=0.03,
            rollback_margin=0.1)


def fast_comparison(n, p_correct, s_correct, seed, sv="v2", revision=1):
    agg = ComparisonAggregator(every=10 ** 9)
    agg.assign("d", sv, revision)
    feed(agg, n, p_correct, s_correct, random.Random(seed), sv=sv)
    return agg.due(now_s=10 ** 6)[0]


def test_fast_path_promotes_over_a_collapsed_champion_after_a_few_pairs():
    """The issue's case: the champion (registered holdout accuracy 0.90) collapsed to ~0.43 after a
    drift, the candidate is at ~0.93: promoted on 30 labeled pairs instead of 200, saying so."""
    policy = PromotionPolicy()
    assert policy.decide(FAST, fast_comparison(29, 0.43, 0.93, 1), 0.90) is None          # below the fast minimum
    c = fast_comparison(30, 0.43, 0.93, 1)
    assert c["primary_metrics"]["accuracy"] < 0.6 and c["shadow_metrics"]["accuracy"] > 0.85
    d = PromotionPolicy().decide(FAST, c, 0.90)
    assert d.action == "promote" and d.reason.startswith("fast path: the champion has collapsed"), d
    assert d.evidence["path"] == "fast" and d.evidence["labeled_samples"] == "30"
    assert float(d.evidence["mcnemar_pvalue"]) < float(d.evidence["alpha_per_look"]) < 0.05 / 10
    assert float(d.evidence["champion_collapse_pvalue"]) < 0.05
    # not collapsed (registered 0.50: 0.43 is within the margin), unknown, or the fast path off: wait
    assert PromotionPolicy().decide(FAST, c, 0.50) is None
    assert PromotionPolicy().decide(FAST, c, None) is None
    assert PromotionPolicy().decide(dict(FAST, fast_promotion_min_samples=0), c, 0.90) is None


def test_fast_path_rejects_the_noisy_candidate_after_the_same_few_pairs():
    """The demo's noisy-label candidate (label noise 0.7 inverts it) is refused early, collapse or not."""
    d = PromotionPolicy().decide(FAST, fast_comparison(30, 0.88, 0.15, 2), 0.90)
    assert d.action == "reject" and d.reason.startswith("fast path: shadow accuracy") and d.evidence["path"] == "fast"


def test_fast_path_takes_a_bounded_number_of_early_looks_and_never_promotes_noise():
    policy = PromotionPolicy()
    assert policy.early_look_points(30, 200) == [30, 60, 120]
    levels = policy.levels(FAST)
    looks = 3  # ceil(max_samples_factor)
    assert levels["early_looks"] * levels["early"] + looks * levels["regular"] == pytest.approx(0.05)  # Bonferroni
    assert policy.levels(dict(FAST, fast_promotion_min_samples=0))["regular"] == pytest.approx(0.05 / 3)
    # one assignment: equal at 30 pairs (look 1), then a clear win at 45 is no look (wait), at 60 it is
    assert policy.decide(FAST, fast_comparison(30, 0.45, 0.45, 3), 0.9) is None
    assert policy.decide(FAST, fast_comparison(45, 0.40, 0.98, 4), 0.9) is None
    assert policy.decide(FAST, fast_comparison(60, 0.40, 0.98, 4), 0.9).action == "promote"
    # asking (ctloop status) takes no look
    other = PromotionPolicy()
    c = fast_comparison(30, 0.43, 0.93, 1, revision=7)
    assert other.waiting_reason(FAST, c, 0.9) is None and other.decide(FAST, c, 0.9).action == "promote"
    # equal models under a collapsed champion: never promoted early, over many seeds
    for seed in range(40):
        policy = PromotionPolicy()
        for n in (30, 60, 120):
            d = policy.decide(FAST, fast_comparison(n, 0.45, 0.45, seed), 0.9)
            assert d is None or d.action == "reject", (seed, n, d)


def test_rollback_watch_judges_a_fast_path_promotion_early_against_the_collapsed_level():
    watch = RollbackWatch(window=200, watch_windows=5)
    rng = random.Random(8)
    for i in range(300):  # v1 served well for long, then collapsed: its live window still looks good
        watch.add_outcome({"kind": "primary", "deployment": "d", "version": "v1",
                           "correct": rng.random() < (0.9 if i < 240 else 0.45), "time": i})
    evidence = {"path": "fast", "primary_accuracy": "0.45", "fast_promotion_min_samples": "30"}
    w = watch.on_promoted("d", "v2", "v1", evidence=evidence)
    assert w.baseline == pytest.approx(0.45) and w.early_sizes == (60, 120)
    decisions = []
    for i in range(200):  # a fast-promoted model worse than the collapsed one: rolled back at 60, not 200
        watch.add_outcome({"kind": "primary", "deployment": "d", "version": "v2", "correct": rng.random() < 0.1,
                           "time": 1000 + i})
        decisions.append(watch.check("d", FAST))
    made = [(i, d) for i, d in enumerate(decisions) if d is not None]
    assert [(i, d.action) for i, d in made] == [(59, "rollback")]
    # a good fast-promoted model (0.85) is kept although v1's live window (~0.8) would have been the baseline
    watch.on_promoted("d", "v3", "v1", evidence=evidence)
    for i in range(1200):   # 5 watched windows, then confirmed
        watch.add_outcome({"kind": "primary", "deployment": "d", "version": "v3", "correct": rng.random() < 0.85,
                           "time": 2000 + i})
        assert watch.check("d", FAST) is None
    assert "d" not in watch.watches


def test_while_the_online_fallback_serves_a_recovered_shadow_is_promoted_and_no_rollback_watch_is_armed():
    """While the online fallback serves: a shadow far above the collapsed champion's accuracy (0.45 at
    engagement) and within the threshold of the fallback is promoted after fast_promotion_min_samples pairs;
    one clearly worse than the fallback is rejected; one not above the champion waits; such a promotion
    arms no rollback watch (rolling back would serve the collapsed champion)."""

    config = {"continuous_deployment_enabled": True, "promotion_min_samples": 200, "promotion_threshold": 0.03,
              "significance_level": 0.05, "fast_promotion_min_samples": 30}

    def comparison(n, primary_acc, shadow_acc, p):
        return {"labeled_samples": n, "primary_metrics": {"accuracy": primary_acc},
                "shadow_metrics": {"accuracy": shadow_acc}, "mcnemar_pvalue": p}

    policy = PromotionPolicy()
    assert policy.decide(config, comparison(20, 0.93, 0.92, 1.0), fallback_baseline=0.45) is None  # too few
    up = policy.decide(config, comparison(30, 0.93, 0.92, 1.0), fallback_baseline=0.45)
    assert up is not None and up.action == "promote" and up.evidence["path"] == "over_fallback"
    worse = policy.decide(config, comparison(60, 0.93, 0.40, 1e-9), fallback_baseline=0.45)
    assert worse is not None and worse.action == "reject"
    assert policy.decide(config, comparison(60, 0.93, 0.47, 1e-9), fallback_baseline=0.45) is not None  # worse: reject
    assert policy.decide(config, comparison(60, 0.50, 0.47, 0.5), fallback_baseline=0.45) is None      # not recovered
    # engaged on a champion that was good (0.88), not collapsed: a shadow level with the fallback cannot beat that
    # baseline significantly; it waits until promotion_min_samples pairs, then overtakes when not below the fallback
    assert policy.decide(config, comparison(150, 0.92, 0.92, 1.0), fallback_baseline=0.88) is None
    level = policy.decide(config, comparison(200, 0.92, 0.92, 1.0), fallback_baseline=0.88)
    assert level is not None and level.action == "promote" and "overtakes" in level.reason
    assert policy.decide(config, comparison(200, 0.92, 0.91, 0.6), fallback_baseline=0.88) is None     # below it: wait
    watch = RollbackWatch(200)
    assert watch.on_promoted("d", "v3", "v1", evidence=up.evidence) is None
