"""The processors' plain logic without Kafka: drift math, counters, stats rate limiting, batched table writes."""
from __future__ import annotations

import numpy as np
import pytest

from processors.drift_detection import DeploymentDrift, psi
from processors.feedback_counters import FeedbackCounters, StatsEmitter
from processors.tables import BatchedTableWriter


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(2000, 2))
    same = rng.normal(size=(2000, 2))
    shifted = same + np.array([0.0, 1.0])
    assert (psi(ref, same) < 0.05).all()
    values = psi(ref, shifted)
    assert values[0] < 0.05 and values[1] > 0.5


def test_drift_windows_reference_then_detection_and_reset():
    rng = np.random.default_rng(2)
    d = DeploymentDrift(window_size=100, psi_threshold=0.2, ks_pvalue=0.001)
    results = [d.add({"a": rng.normal(), "b": rng.normal()}, i) for i in range(500)]
    measured = [r for r in results if r]
    assert len(measured) == 4                                   # window 1 is the reference
    assert all(r["drift_share"] < 0.5 and r["reference"] == "first_window" for r in measured)
    for i in range(99):
        d.add_outcome(correct=i % 10 != 0)
    r = None
    for i in range(100):
        r = d.add({"a": rng.normal() + 2, "b": rng.normal()}, 1000 + i) or r
    assert r["drift_share"] == 0.5 and [f["drifted"] for f in r["features"]] == [True, False]
    assert r["window_start"] == 1000 and r["window_end"] == 1099 and r["error_rate"] == pytest.approx(10 / 99)
    d.reset()                                                    # a promotion: the next window is the reference
    assert d.add({"a": 5.0, "b": 0.0}, 0) is None and d.reference is None


def test_drift_window_size_is_checked():
    with pytest.raises(ValueError, match="drift_window_size"):
        DeploymentDrift(window_size=1)


def test_counters_are_offset_guarded_and_summed_per_deployment():
    c = FeedbackCounters()
    assert c.count("d", "predictions", 0, 5, predictions_logged=1)
    assert not c.count("d", "predictions", 0, 5, predictions_logged=1)     # replay of offset 5
    assert c.count("d", "predictions", 1, 0, predictions_logged=1)
    assert c.count("d", "feedback", 0, 0, feedback_received=1, reviewed=1, added_to_training=1)
    assert c.count("e", "feedback", 0, 1, feedback_received=1)
    totals = c.totals()
    assert totals["d"]["predictions_logged"] == 2 and totals["d"]["added_to_training"] == 1
    assert totals["e"]["feedback_received"] == 1
    c.on_trigger("d", {"added_to_training": "1"})
    stats = c.stats_record("d", totals["d"], trigger_threshold=4)
    assert stats["reviewed_since_last_training"] == 0 and stats["progress"] == 0.0
    with pytest.raises(KeyError, match="unknown counter"):
        c.count("d", "feedback", 0, 9, bogus=1)


def test_stats_emitter_rate_limits_and_coalesces():
    now = [0.0]
    e = StatsEmitter(1.0, clock=lambda: now[0])
    e.changed("d")
    assert e.due() == ["d"]
    e.changed("d")
    e.changed("d")
    assert e.due() == []                                          # within the interval: held
    now[0] = 1.5
    assert e.due() == ["d"] and e.due() == []                    # coalesced into one


def test_batched_writer_on_a_dict_writes_through():
    table = {}
    w = BatchedTableWriter(table)
    w.write(0, "k", {"v": 1})
    w.write(0, "gone", None)
    assert table == {"k": {"v": 1}} and w.persist() == 0


def test_reference_from_an_attached_dataset(tmp_path):
    import pandas as pd

    from processors.drift_detection import load_reference

    rng = np.random.default_rng(3)
    path = tmp_path / "base.csv"
    pd.DataFrame({"a": rng.normal(size=800), "b": rng.normal(size=800), "label": ["x"] * 800,
                  "target": np.zeros(800)}).to_csv(path, index=False)
    features, rows = load_reference(f"file://{path}", max_rows=500)
    assert features == ["a", "b"] and rows.shape == (500, 2)
    d = DeploymentDrift(window_size=100)
    d.set_reference(features, rows)
    r = None
    for i in range(100):                          # the first window is measured: the reference is the dataset
        r = d.add({"a": rng.normal() + 3, "b": rng.normal()}, i) or r
    assert r["reference"] == "training_data" and [f["drifted"] for f in r["features"]] == [True, False]
    with pytest.raises(ValueError, match="no numeric feature"):
        pd.DataFrame({"label": ["x"]}).to_csv(tmp_path / "bad.csv", index=False)
        load_reference(str(tmp_path / "bad.csv"))


def test_build_app_keeps_faust_files_under_the_data_dir(tmp_path):
    """A fresh machine: the data dir does not exist yet, and nothing lands in the working directory."""
    from pathlib import Path

    from infra.settings import Settings
    from processors.app import build_app

    data_dir = tmp_path / "not" / "yet"
    app, ctx = build_app(Settings(bootstrap_servers="127.0.0.1:1", data_dir=str(data_dir)), stages=())
    try:
        assert (data_dir / "faust").is_dir()
        assert Path(str(app.conf.datadir)).resolve() == (data_dir / "faust").resolve()
    finally:
        ctx.producer.close(timeout_s=1)
