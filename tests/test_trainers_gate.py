"""The evaluation gate, dataset assembly, training and artifacts: plain functions, no Kafka."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from trainers.artifacts import ArtifactStore, TamperedArtifactError
from trainers.dataset import DatasetError, build_dataset, split_mask
from trainers.evaluation import GatePolicy, evaluate_gate, macro_f1, parse_min_metrics
from trainers.models import Predictor, build_model, load_predictor, model_config
from streams.registry import ModelVersion
from trainers.training import flip_labels, train_classifier

POLICY = GatePolicy(holdout_tolerance=0.01, segment_tolerance=0.05, forgetting_tolerance=0.05)


def labels(pattern: str, n: int) -> list[str]:
    return list(pattern * n)


def test_better_candidate_passes_with_no_reasons():
    y = labels("ab", 50)
    champion = [t if i % 5 else ("b" if t == "a" else "a") for i, t in enumerate(y)]   # 80 % right
    decision = evaluate_gate(POLICY, y, y, champion)
    assert decision.passed and decision.reasons == []
    assert decision.candidate_metrics["accuracy"] == 1.0 and decision.champion_metrics["accuracy"] == pytest.approx(0.8)
    assert {"recent_accuracy", "recent_macro_f1", "segment[a]", "segment[b]"} <= set(decision.checks)


def test_first_model_has_only_the_minimum_checks():
    y = labels("ab", 20)
    assert evaluate_gate(GatePolicy(min_metrics={"accuracy": 0.9}), y, y).passed
    bad = evaluate_gate(GatePolicy(min_metrics={"accuracy": 0.9}), y, ["a"] * 40)
    assert not bad.passed and bad.reasons[0].startswith("min_accuracy: candidate accuracy 0.500")


def test_worse_candidate_lists_every_failed_check():
    y = labels("ab", 50)
    candidate = ["a"] * 100                        # never predicts b
    decision = evaluate_gate(POLICY, y, candidate, y)
    assert not decision.passed
    text = " | ".join(decision.reasons)
    assert "recent_accuracy" in text and "recent_macro_f1" in text and "segment[b]" in text
    assert "segment[b]: candidate F1 0.000" in text  # class b is never predicted


def test_segment_check_does_not_favour_a_champion_that_predicts_one_class():
    # after a drift the champion says "b" for nearly everything: recall on b is perfect, F1 is not
    y = ["a"] * 50 + ["b"] * 50
    champion = ["b"] * 95 + ["a"] * 5                         # 0.55 accuracy, recall(b) = 1.0
    candidate = ["a"] * 45 + ["b"] * 5 + ["b"] * 45 + ["a"] * 5   # 0.90 accuracy, recall(b) = 0.9
    decision = evaluate_gate(POLICY, y, candidate, champion)
    assert decision.passed, decision.reasons


def test_segment_check_catches_a_class_that_collapses_while_accuracy_holds():
    # 90 a, 10 b (support >= 10): the candidate loses class b entirely but gains elsewhere
    y = ["a"] * 90 + ["b"] * 10
    champion = ["a"] * 80 + ["b"] * 10 + ["b"] * 10          # 10 a-errors, b perfect: 0.90
    candidate = ["a"] * 90 + ["a"] * 10                      # a perfect, b lost: 0.90
    decision = evaluate_gate(GatePolicy(holdout_tolerance=0.5), y, candidate, champion)
    assert [r.split(":")[0] for r in decision.reasons] == ["segment[b]"]


def test_forgetting_check_uses_historical_rows_with_a_tolerance():
    y = labels("ab", 50)
    hist = [i < 40 for i in range(100)]
    # candidate perfect on recent rows, 10 % worse than the champion on historical rows
    candidate = [("b" if t == "a" else "a") if (i < 40 and i % 10 == 0) else t for i, t in enumerate(y)]
    within = evaluate_gate(GatePolicy(forgetting_tolerance=0.15, segment_tolerance=0.2, holdout_tolerance=0.2),
                           y, candidate, y, historical=hist)
    assert within.passed, within.reasons
    assert within.candidate_metrics["historical_accuracy"] == pytest.approx(0.9)
    beyond = evaluate_gate(GatePolicy(forgetting_tolerance=0.05, segment_tolerance=0.2, holdout_tolerance=0.2),
                           y, candidate, y, historical=hist)
    assert [r.split(":")[0] for r in beyond.reasons] == ["forgetting"]


def test_concept_drift_recent_data_decides_not_the_old():
    # the champion is right on old data, wrong on recent data; the candidate learned the new concept
    # and is slightly worse on the old: accepted within the forgetting tolerance
    y = labels("ab", 50)
    hist = [i < 50 for i in range(100)]
    champion = [t if i < 50 else ("b" if t == "a" else "a") for i, t in enumerate(y)]
    candidate = [t if (i >= 50 or i % 25) else ("b" if t == "a" else "a") for i, t in enumerate(y)]
    decision = evaluate_gate(POLICY, y, candidate, champion, historical=hist)
    assert decision.passed, decision.reasons
    assert decision.candidate_metrics["recent_accuracy"] == 1.0 and decision.champion_metrics["recent_accuracy"] == 0.0


def test_regression_set_check():
    y = labels("ab", 50)
    reg_true = labels("ab", 10)
    decision = evaluate_gate(POLICY, y, y, y, regression=(reg_true, ["a"] * 20, reg_true))
    assert [r.split(":")[0] for r in decision.reasons] == ["regression_set"]
    assert decision.candidate_metrics["regression_accuracy"] == 0.5


def test_min_metrics_parsing_names_bad_entries():
    assert parse_min_metrics("accuracy=0.7, macro_f1=0.5") == {"accuracy": 0.7, "macro_f1": 0.5}
    assert parse_min_metrics("") == {}
    with pytest.raises(ValueError, match="gate_min_metrics"):
        parse_min_metrics("auc=0.7")
    with pytest.raises(ValueError, match="no numeric value"):
        parse_min_metrics("accuracy=high")


def test_macro_f1():
    assert macro_f1(np.array(["a", "b"]), np.array(["a", "b"])) == 1.0
    assert macro_f1(np.array(["a", "a", "b", "b"]), np.array(["a", "a", "a", "a"])) == pytest.approx((2 / 3 + 0) / 2)


# -- dataset ---------------------------------------------------------------------------------------
def _examples(n, seed=0):
    rng = np.random.default_rng(seed)
    return [{"prediction_id": f"p{i}", "label": "ab"[i % 2], "features": {"x": float(rng.normal(i % 2 * 3)), "y": 1.0},
             "prediction_time": 1_000_000 + i} for i in range(n)]


def test_split_is_deterministic_and_content_hash_is_order_independent():
    ex = _examples(200)
    d1 = build_dataset(ex)
    d2 = build_dataset(list(reversed(ex)))
    assert d1.lineage["content_hash"] == d2.lineage["content_hash"]
    assert (d1.holdout_mask() == d2.holdout_mask()).all()
    assert 20 < d1.holdout_mask().sum() < 65
    assert (split_mask(["p1", "p2"]) == split_mask(["p1", "p2"])).all()
    ex[0] = dict(ex[0], label="b" if ex[0]["label"] == "a" else "a")
    assert build_dataset(ex).lineage["content_hash"] != d1.lineage["content_hash"]


def test_dataset_errors_name_the_cause():
    with pytest.raises(DatasetError) as e:
        build_dataset(_examples(10), min_examples=50)
    assert e.value.error_type == "too_few_examples" and "at least 50" in e.value.reason
    from trainers.dataset import TrainingWindow

    with pytest.raises(DatasetError) as e:   # a window too small says which window
        build_dataset(_examples(10), min_examples=50, window=TrainingWindow("since_change", "a cut"),
                      partitions=[{"partition": 0, "start_offset": 5, "end_offset": 15}])
    assert "(since_change window, offsets 0:5-15)" in e.value.reason
    with pytest.raises(DatasetError) as e:
        build_dataset([dict(x, label="a") for x in _examples(60)])
    assert e.value.error_type == "single_class"
    sparse = _examples(60)
    sparse[3] = dict(sparse[3], features={"x": 1.0})
    with pytest.raises(DatasetError) as e:
        build_dataset(sparse)
    assert e.value.error_type == "nan_values" and "'y'" in e.value.reason


def test_historical_rows_come_from_log_offsets_not_event_times():
    ex = _examples(100)
    positions = {e["prediction_id"]: (i % 2, i // 2) for i, e in enumerate(ex)}   # 2 partitions, 50 each
    ex[7] = dict(ex[7], prediction_time=ex[7]["prediction_time"] * 1000)           # a skewed clock changes nothing
    d = build_dataset(ex, positions=positions, seen_until={0: 20, 1: 30})       # the champion saw 20 + 30 rows
    assert d.historical.sum() == 50
    assert set(d.ids[d.historical]) == {e["prediction_id"] for i, e in enumerate(ex) if i // 2 < (20, 30)[i % 2]}
    assert not build_dataset(ex, positions=positions).historical.any()           # no champion snapshot: all recent


def test_one_example_with_a_microsecond_event_time_does_not_decide_the_gate():
    """Issue 11: 300 labeled examples of the last two hours plus one whose event_time was written in
    microseconds. Recency comes from the log, so the recent holdout is the whole holdout and a candidate
    far better than the champion is accepted."""
    rng = np.random.default_rng(3)
    now_ms = 1_764_000_000_000
    ex = [{"prediction_id": f"p{i}", "label": "ab"[i % 2], "features": {"x": float(i % 2)},
           "prediction_time": now_ms - int(rng.integers(0, 2 * 3600 * 1000))} for i in range(300)]
    ex.append({"prediction_id": "p300", "label": "a", "features": {"x": 0.0}, "prediction_time": now_ms * 1000})
    d = build_dataset(ex, positions={e["prediction_id"]: (0, i) for i, e in enumerate(ex)}, seen_until={})
    holdout = d.subset(d.holdout_mask())
    assert not holdout.historical.any() and len(holdout) > 30
    y = holdout.y.tolist()
    flip = {"a": "b", "b": "a"}
    candidate = [flip[t] if i % 60 == 59 else t for i, t in enumerate(y)]   # ~0.98 accuracy
    champion = [flip[t] if i % 10 < 3 else t for i, t in enumerate(y)]     # ~0.70 accuracy
    decision = evaluate_gate(POLICY, y, candidate, champion, historical=holdout.historical)
    assert decision.candidate_metrics["accuracy"] > 0.95 and decision.champion_metrics["accuracy"] < 0.75
    assert decision.passed, decision.reasons
    assert decision.candidate_metrics["recent_accuracy"] == decision.candidate_metrics["accuracy"]


# -- training and artifacts ------------------------------------------------------------------------
@pytest.mark.slow
def test_training_learns_and_label_noise_hurts():
    ds = build_dataset(_examples(400, seed=1))
    hold = ds.holdout_mask()
    train, holdout = ds.subset(~hold), ds.subset(hold)
    good = train_classifier(train)
    p = Predictor(good.module, good.feature_names, good.classes)
    assert np.mean(p.predict_labels(holdout.x) == holdout.y) > 0.9
    noisy = train_classifier(train, label_noise=0.8)
    p = Predictor(noisy.module, noisy.feature_names, noisy.classes)
    assert np.mean(p.predict_labels(holdout.x) == holdout.y) < 0.5
    flipped = flip_labels(np.array(list("abab")), ["a", "b"], 0.5)
    assert (flipped != np.array(list("abab"))).sum() == 2


def test_artifact_round_trip_verifies_sha_and_refuses_pickled_code(tmp_path):
    store = ArtifactStore(tmp_path)
    config = model_config(["x", "y"], ["a", "b"])
    module = build_model("trainers.models:tabular_mlp", config)
    uri, sha = store.save("dep/with slash", "v1", module.state_dict())
    assert uri.startswith("file://") and not list(tmp_path.rglob("*.tmp"))
    mv = ModelVersion("dep", "m", "v1", "champion", {}, uri, sha, "trainers.models:tabular_mlp", config, None, None, None, 0)
    predictor = load_predictor(mv, store)
    label, probs = predictor.predict({"x": 1.0, "y": 2.0, "unknown": 5.0})
    assert label in ("a", "b") and set(probs) == {"a", "b"}
    with pytest.raises(TamperedArtifactError):
        store.load_state_dict(uri, "0" * 64)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"weights": torch.zeros(2), "evil": Evil()}, buf)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(buf.getvalue())
    import hashlib

    with pytest.raises(pickle.UnpicklingError):
        store.load_state_dict(evil.as_uri(), hashlib.sha256(buf.getvalue()).hexdigest())


def test_factory_errors_are_clear():
    with pytest.raises(ValueError, match="module:function"):
        build_model("nocolon", model_config(["x"], ["a", "b"]))
    with pytest.raises(ValueError, match="cannot import"):
        build_model("no_such_module:f", model_config(["x"], ["a", "b"]))


# -- the gate after a change point (issue 12) -------------------------------------------------------
def _agrawal(function: int, n: int, seed: int, start: int = 0) -> list[dict]:
    """``n`` labeled examples of river's Agrawal generator with ``classification_function`` ``function``."""
    from river.datasets import synth

    rows = synth.Agrawal(classification_function=function, seed=seed).take(n)
    return [{"prediction_id": f"p{start + i:06d}", "label": str(int(y)),
             "features": {str(k): float(v) for k, v in x.items()}, "prediction_time": 1_000_000 + start + i}
            for i, (x, y) in enumerate(rows)]


def _gate_run(dataset, champion: Predictor, *, label_noise: float = 0.0):
    """Train on the dataset's training split, gate against ``champion`` on its holdout (as the pipeline does)."""
    from trainers.evaluation import GateRows

    hold = dataset.holdout_mask()
    train, holdout = dataset.subset(~hold), dataset.subset(hold)
    result = train_classifier(train, label_noise=label_noise, seed=7)
    candidate = Predictor(result.module, result.feature_names, result.classes)
    return evaluate_gate(GatePolicy(min_metrics={"accuracy": 0.7, "macro_f1": 0.6}), holdout.y,
                         candidate.predict_labels(holdout.x),
                         champion.predict_labels(champion.align(holdout.x, holdout.feature_names)),
                         historical=holdout.historical, current=holdout.current,
                         rows=GateRows.of(dataset.scope)), candidate


@pytest.mark.slow
def test_a_candidate_of_the_new_concept_passes_the_gate_after_a_change_point():
    """Issue 12, cause 2: Agrawal switches classification_function 0 -> 2 at offset 1200 of one
    partition. The champion learned function 0 on offsets 0-1200. A since_change trigger's window is
    offsets 1200-1700 (post-change only): its candidate passes (today's forgetting check, which judged it on
    the pre-change rows, rejected it), and a candidate trained with label noise 0.7 is still rejected,
    each reason naming the rows that decided it."""
    from trainers.dataset import TrainingWindow

    old, new = _agrawal(0, 1200, seed=1), _agrawal(2, 500, seed=2, start=1200)
    champion_ds = build_dataset(old, positions={e["prediction_id"]: (0, i) for i, e in enumerate(old)},
                                partitions=[{"partition": 0, "start_offset": 0, "end_offset": 1200}])
    champ = train_classifier(champion_ds.subset(~champion_ds.holdout_mask()), seed=3, max_epochs=8)
    champion = Predictor(champ.module, champ.feature_names, champ.classes)
    champion_lineage_ends = {0: 1200}

    window = TrainingWindow("since_change", "ADWIN cut on the error stream at offset 0:1200", 500)
    snapshot = [{"partition": 0, "start_offset": 1200, "end_offset": 1700}]
    positions = {e["prediction_id"]: (0, 1200 + i) for i, e in enumerate(new)}
    ds = build_dataset(new, positions=positions, partitions=snapshot, seen_until=champion_lineage_ends,
                       seen_from={0: 0}, window=window)
    assert not ds.historical.any() and ds.current.all()      # the champion never held a post-change row
    assert ds.lineage["training_window"] == "since_change" and ds.lineage["partitions"] == snapshot
    assert ds.lineage["change_point"] == "ADWIN cut on the error stream at offset 0:1200"
    decision, candidate = _gate_run(ds, champion)
    assert decision.passed, decision.reasons
    assert "forgetting" not in decision.checks
    assert decision.candidate_metrics["recent_accuracy"] > 0.85 > decision.champion_metrics["recent_accuracy"]

    # the same candidate judged the old way (pre-change rows as history): forgetting rejects it
    every = old + new
    all_ds = build_dataset(every, positions={e["prediction_id"]: (0, i) for i, e in enumerate(every)},
                           partitions=[{"partition": 0, "start_offset": 0, "end_offset": 1700}],
                           seen_until=champion_lineage_ends)
    hold = all_ds.holdout_mask()
    holdout = all_ds.subset(hold)
    old_way = evaluate_gate(POLICY, holdout.y, candidate.predict_labels(candidate.align(holdout.x, holdout.feature_names)),
                            champion.predict_labels(champion.align(holdout.x, holdout.feature_names)),
                            historical=holdout.historical)
    assert [r.split(":")[0] for r in old_way.reasons] == ["forgetting"], old_way.reasons

    noisy, _ = _gate_run(ds, champion, label_noise=0.7)
    assert not noisy.passed
    text = " | ".join(noisy.reasons)
    assert "recent_accuracy" in text and "min_accuracy" in text, text
    assert "since_change window rows, after the change point (ADWIN cut on the error stream at offset 0:1200), " \
           "offsets 0:1200-1700" in text, text
    assert "the since_change window's holdout" in text


def test_forgetting_after_a_change_applies_to_window_rows_the_champion_held():
    """A champion trained on the post-change offsets 1200-1500 and a since_change trigger of 1200-1700:
    the forgetting check runs on the holdout rows of 1200-1500 (valid under the current concept), "better"
    on the whole window; the base dataset is not part of a windowed dataset's history."""
    import pandas as pd

    from trainers.dataset import TrainingWindow

    new = _agrawal(2, 500, seed=2, start=1200)
    positions = {e["prediction_id"]: (0, 1200 + i) for i, e in enumerate(new)}
    ds = build_dataset(new, positions=positions, partitions=[{"partition": 0, "start_offset": 1200, "end_offset": 1700}],
                       seen_until={0: 1500}, seen_from={0: 1200}, window=TrainingWindow("since_change", "a cut"))
    held = {e["prediction_id"] for e in new[:300]}
    assert set(ds.ids[ds.historical]) == held and ds.current.all()
    assert "offsets 0:1200-1500" in ds.scope["historical"]
    # an explicit "all" window (and a trigger naming none) keeps the base dataset as history
    frame = pd.DataFrame([dict(e["features"], label=e["label"]) for e in _agrawal(0, 50, seed=5)])
    everything = build_dataset(new, positions=positions, base_frame=frame, base_uri="base.csv",
                               seen_until={0: 1500}, window=TrainingWindow("all"))
    assert everything.historical.sum() == 300 + 50 and everything.current is None
    assert everything.lineage["training_window"] == "all" and everything.lineage["change_point"] is None


def test_trigger_window_parsing_names_the_field():
    from trainers.dataset import TrainingWindow

    assert TrainingWindow.of_trigger({"evidence": {}}) is None          # written before windows existed
    w = TrainingWindow.of_trigger({"evidence": {"training_window": "since_change", "change_point": "ADWIN cut",
                                                "post_change_labels": "240"}})
    assert w == TrainingWindow("since_change", "ADWIN cut", 240) and w.windowed
    assert not TrainingWindow.of_trigger({"evidence": {"training_window": "all"}}).windowed
    with pytest.raises(DatasetError, match="training_window"):
        TrainingWindow.of_trigger({"evidence": {"training_window": "last_week"}})
    with pytest.raises(DatasetError, match="post_change_labels"):
        TrainingWindow.of_trigger({"evidence": {"training_window": "sliding", "post_change_labels": "many"}})


def test_every_reason_names_the_rows_that_decided_it():
    """Window all: the forgetting reason names the base dataset and the champion's snapshot ends, the
    'better' reasons the recent rows; the floors name the holdout and its size."""
    import pandas as pd

    from trainers.evaluation import GateRows

    ex = _examples(200)
    positions = {e["prediction_id"]: (0, i) for i, e in enumerate(ex)}
    frame = pd.DataFrame([{"x": float(i % 2 * 3), "y": 1.0, "label": "ab"[i % 2]} for i in range(40)])
    ds = build_dataset(ex, positions=positions, seen_until={0: 120}, base_frame=frame, base_uri="base.csv",
                       partitions=[{"partition": 0, "start_offset": 0, "end_offset": 200}])
    holdout = ds.subset(ds.holdout_mask())
    flip = {"a": "b", "b": "a"}
    y = holdout.y.tolist()
    decision = evaluate_gate(GatePolicy(min_metrics={"accuracy": 0.9}), y, [flip[t] for t in y], y,
                             historical=holdout.historical, current=holdout.current, rows=GateRows.of(ds.scope))
    by_check = {r.split(":")[0]: r for r in decision.reasons}
    assert f"on the holdout ({len(y)} rows)" in by_check["min_accuracy"]
    assert "base-dataset rows and examples below the champion's snapshot ends (0:0-120)" in by_check["forgetting"]
    assert f"{int(holdout.historical.sum())} historical holdout rows" in by_check["forgetting"]
    assert "recent rows: examples after the champion's snapshot (ends 0:120) of offsets 0:0-200" \
        in by_check["recent_accuracy"]
