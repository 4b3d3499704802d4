"""Training windows and change points as plain logic (processors/training_window.py): exact offsets of
sliding and since-change windows, the ADWIN cut on the champion's error stream, drift change points by
prediction time, the wait for post-change labels and its doubling."""
from __future__ import annotations

import random

import pytest

from processors.training_window import LabelWindow, format_offsets, parse_offsets

ENDS = {0: 10_000, 1: 10_000, 2: 10_000}


def _feed(w: LabelWindow, n: int, start: int = 0, *, accuracy: float | None = None, rng=None, t0: int = 0):
    """n examples round-robin over 3 partitions; example k (global) is at offset k // 3 of partition k % 3."""
    for k in range(start, start + n):
        correct = None if accuracy is None else rng.random() < accuracy
        w.add(k % 3, k // 3, prediction_time=t0 + k, event_time=t0 + k, champion_correct=correct)


def test_sliding_window_is_the_exact_offsets_of_the_last_n_examples():
    w = LabelWindow()
    _feed(w, 900)
    snap, evidence = w.snapshot("sliding", ENDS, labels=300)
    # the last 300 are examples 600..899: partition p starts at the first of them in p, offset 200
    assert snap == [{"partition": p, "start_offset": 200, "end_offset": 10_000} for p in range(3)]
    assert evidence == {"training_window": "sliding", "window_labels": 300}
    snap, _ = w.snapshot("sliding", ENDS, labels=301)          # one more: example 599 at partition 2, offset 199
    assert [p["start_offset"] for p in snap] == [200, 200, 199]


def test_all_history_starts_at_zero_and_unknown_window_is_refused():
    w = LabelWindow()
    _feed(w, 30)
    snap, evidence = w.snapshot("all", ENDS, labels=10)
    assert all(p["start_offset"] == 0 and p["end_offset"] == 10_000 for p in snap)
    assert evidence["training_window"] == "all"
    with pytest.raises(ValueError, match="training_window"):
        w.snapshot("recent", ENDS, labels=10)


def test_sliding_window_by_time_span():
    w = LabelWindow()
    _feed(w, 90, t0=1_000_000)                               # event times 1_000_000 .. 1_000_089 ms
    snap, evidence = w.snapshot("sliding", ENDS, labels=0, seconds=1, now_ms=1_001_060)
    # within 1 s of now: event time >= 1_000_060, examples 60..89
    assert evidence["window_labels"] == 30 and [p["start_offset"] for p in snap] == [20, 20, 20]


def test_adwin_cut_on_the_error_stream_gives_the_change_point_and_a_since_change_window():
    rng = random.Random(3)
    w = LabelWindow(min_post_change_labels=200)
    _feed(w, 3000, accuracy=0.95, rng=rng)
    assert w.change is None                                   # stationary: no cut
    for k in range(3000, 3400):
        cp = w.add(k % 3, k // 3, prediction_time=k, event_time=k, champion_correct=rng.random() < 0.5)
        if cp:
            break
    assert cp is not None and cp.signal == "adwin" and "ADWIN cut" in cp.description
    assert 2800 <= cp.seq - 1 <= 3100, cp.seq                  # the change was at example #3001
    assert cp.post_change_labels == w.seen - cp.seq + 1
    snap, evidence = w.snapshot("since_change", ENDS, labels=2000)
    first = cp.seq - 1                                       # example index of labeled example #seq
    assert {p["partition"]: p["start_offset"] for p in snap} == \
        {q: min(k // 3 for k in range(first, first + 3) if k % 3 == q) for q in range(3)}
    assert evidence["training_window"] == "since_change" and evidence["post_change_labels"] == cp.post_change_labels
    assert parse_offsets(evidence["change_point_offsets"]) == {p["partition"]: p["start_offset"] for p in snap}
    w.on_drift(True, window_start=10**12, evidence={"drift_share": "1"})   # a drift signal: a later change
    current = w.change
    assert w.drift_evidence and current is not cp and current.signal == "drift"
    w.on_promotion()                 # a new champion: the concept did not change; the drift stage restarts
    assert w.change is current and w.drift_evidence is None and not w.drift_active


def test_since_change_is_capped_to_the_latest_labels_and_falls_back_to_sliding():
    w = LabelWindow(min_post_change_labels=10)
    _feed(w, 300)
    _, evidence = w.snapshot("since_change", ENDS, labels=30)
    assert evidence["training_window"] == "sliding" and evidence["window_labels"] == 30
    w.signal(101, "adwin", "test cut")                        # examples #101.. = indexes 100..299
    snap, evidence = w.snapshot("since_change", ENDS, labels=0)
    assert evidence["window_labels"] == 200 and [p["start_offset"] for p in snap] == [34, 33, 33]
    snap, evidence = w.snapshot("since_change", ENDS, labels=60)   # the latest 60: indexes 240..299
    assert evidence["window_labels"] == 60 and [p["start_offset"] for p in snap] == [80, 80, 80]
    assert parse_offsets(evidence["change_point_offsets"]) == {0: 34, 1: 33, 2: 33}


def test_drift_change_point_counts_only_predictions_made_after_the_window_start():
    w = LabelWindow(min_post_change_labels=5)
    for k in range(50):                                       # labels arrive late: prediction time k - 20
        w.add(k % 3, k // 3, prediction_time=k - 20, event_time=k)
    cp = w.on_drift(True, window_start=25, evidence={"drift_share": "1"})
    assert cp.signal == "drift" and cp.post_change_labels == 5         # predictions 25..29 (examples 45..49)
    assert w.on_drift(True, window_start=40) is None                    # the same run of detected windows
    assert w.change is cp and w.drift_active
    assert w.on_drift(False) is None and not w.drift_active and w.drift_evidence is None
    w.add(0, 100, prediction_time=10, event_time=60)                   # an older prediction's late label
    assert cp.post_change_labels == 5
    snap, evidence = w.snapshot("since_change", {0: 200, 1: 200, 2: 200}, labels=0)
    assert evidence["window_labels"] == 5 and [p["start_offset"] for p in snap] == [15, 15, 15]


def test_triggers_wait_for_post_change_labels_then_again_as_the_count_doubles():
    w = LabelWindow(min_post_change_labels=200)
    _feed(w, 100)
    w.signal(101, "adwin", "test")
    assert w.waiting_for(200) == 200
    _feed(w, 199, start=100)
    assert w.waiting_for(200) == 1
    _feed(w, 1, start=299)
    assert w.waiting_for(200) is None
    w.fired(200)
    assert w.waiting_for(200) == 200 and w.waiting_for(200, doubling=False) is None
    assert w.signal(300, "drift", "same change?") is not None       # fired: a later signal moves it
    w.change.fired, w.change.post_change_labels = 1, 500            # held at 400, fired at 500: next 800
    w.change.next_due = 400
    w.fired(200)
    assert w.change.next_due == 800


def test_a_signal_while_the_change_point_gathers_evidence_does_not_move_it():
    w = LabelWindow(min_post_change_labels=200)
    _feed(w, 100)
    first = w.signal(50, "adwin", "first")
    assert w.signal(90, "drift", "second") is None and w.change is first
    _feed(w, 200, start=100)                                         # 250 after it: evidence complete
    assert w.signal(280, "adwin", "later") is not None and w.change.seq == 280


def test_an_adwin_cut_or_drift_replaces_a_decay_change_point_until_it_fired():
    w = LabelWindow(min_post_change_labels=200)
    _feed(w, 100, accuracy=1.0, rng=random.Random(0))
    coarse = w.on_decay(20)
    assert coarse.signal == "decay" and coarse.seq == 81 and coarse.post_change_labels == 20
    assert w.on_decay(20) is None                                    # one change point at a time
    cut = w.signal(95, "adwin", "ADWIN cut")
    assert cut is not None and w.change is cut
    assert w.signal(97, "decay", "coarse again") is None and w.change is cut


def test_offsets_text_round_trip_and_error_names_the_field():
    text = format_offsets([{"partition": 0, "start_offset": 5, "end_offset": 9}, {"partition": 1, "start_offset": 2,
                                                                                  "end_offset": 2}])
    assert text == "0:5,1:2" and parse_offsets(text) == {0: 5, 1: 2}
    with pytest.raises(ValueError, match="change_point_offsets"):
        parse_offsets("0-5")


def test_window_growth_retrains_as_the_post_change_window_doubles_up_to_the_cap():
    """After a trigger on a change point, a retrain is due at 400, 800, 1,600 post-change labels (the reason
    need not hold any more), never before the first trigger, and not once the doubled window passes the cap."""
    w = LabelWindow(min_post_change_labels=200)
    _feed(w, 100)
    w.signal(101, "adwin", "test")
    _feed(w, 250, start=100)
    assert w.growth_due(2000) is None                      # no trigger fired on this change point yet
    w.fired(200)                                           # fired at 250 post-change labels: next at 400
    assert w.change.next_due == 400 and w.growth_due(2000) is None
    _feed(w, 150, start=350)                               # 400 post-change labels
    due = w.growth_due(2000)
    assert due is not None and due["change_point_signal"] == "adwin" and "400" in due["window_growth"]
    assert w.growth_reason() == "performance_decay"
    w.fired(200)
    assert w.change.next_due == 800 and w.growth_due(2000) is None
    _feed(w, 400, start=500)
    assert w.growth_due(2000) is not None and w.growth_due(600) is None     # 800 > a cap of 600: no more
    w.fired(200)
    _feed(w, 800, start=900)                               # 1,600 post-change labels
    assert w.growth_due(2000) is not None and w.growth_due(0) is not None   # 0: no cap
    w.fired(200)                                           # next at 3,200 > 2,000: the window stopped growing
    _feed(w, 1600, start=1700)
    assert w.growth_due(2000) is None
    w.signal(3400, "drift", "a new change")
    assert w.growth_reason() == "drift" and w.growth_due(2000) is None     # no trigger on the new one yet


def test_a_new_champion_that_decays_after_a_trigger_fired_starts_a_new_change_point():
    """Promoted just as the concept changed again, a champion starts with a high error (ADWIN on its own error
    stream sees no rise): its decay replaces the change point the earlier triggers fired on, so the decay
    trigger waits for min_post_change_labels after it, not for the old point's doubling (3,200)."""
    rng = random.Random(4)
    w = LabelWindow(min_post_change_labels=200)
    _feed(w, 1000, accuracy=0.95, rng=rng)
    w.signal(1001, "adwin", "first change")
    _feed(w, 1700, start=1000, accuracy=0.9, rng=rng)
    for _ in range(3):
        w.fired(200)
    assert w.change.next_due == 3200 and w.waiting_for(200) == 1500
    assert w.on_decay(200) is None                         # decay of the same champion: the same change
    w.on_promotion()                                       # a new champion, then it decays
    _feed(w, 300, start=2700, accuracy=0.4, rng=rng)
    cp = w.on_decay(200)
    assert cp is not None and cp.signal == "decay" and cp.seq == w.primary_seqs[-200]
    assert cp.post_change_labels == 200 and not w.decay_restarts
    assert w.waiting_for(200) is None and w.waiting_for(400) == 200   # the decayed window is the evidence
    assert w.on_decay(200) is None                         # once: the new point gathers its evidence
