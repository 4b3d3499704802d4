"""FeedbackLoopStats.reviewed_since_last_training counts labeled examples *added to training* since the
deployment's last trigger, not reviews (issue 14, "one name, two meanings"). The released field name
stays (wire format); its doc string, the gauge and the docs say what it counts. No Kafka needed."""
from __future__ import annotations

import json
from pathlib import Path

from processors.feedback_counters import FeedbackCounters
from processors.trigger_policy import TriggerPolicy

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def _field(path: Path, name: str) -> dict:
    return next(f for f in json.loads(path.read_text())["fields"] if f["name"] == name)


def test_reviews_that_add_no_example_do_not_count_towards_the_next_training():
    """10 reviewed predictions, of which 4 reviews ("incorrect" without a label) add no labeled example:
    6 added to training; after a trigger at 2 added, 4 count towards the next training, not 8."""
    c = FeedbackCounters()
    for offset in range(10):
        added = 1 if offset < 6 else 0
        assert c.count("d", "feedback", 0, offset, feedback_received=1, reviewed=1, added_to_training=added)
    totals = c.totals()["d"]
    assert (totals["reviewed"], totals["added_to_training"]) == (10, 6)
    c.on_trigger("d", {"added_to_training": "2"})
    stats = c.stats_record("d", totals, trigger_threshold=8)
    assert stats["reviewed_since_last_training"] == 4 and stats["progress"] == 0.5
    # the review-threshold rule reads the same count
    policy = TriggerPolicy(trigger_timeout_s=100)
    policy.on_trigger({"deployment": "d", "trigger_id": "t1", "event_time": 0,
                       "evidence": {"added_to_training": "2"}})
    assert policy.review("d", {"added_to_training": 6, "reviewed": 10}, {"trigger_threshold": 5}) is None
    assert policy.review("d", {"added_to_training": 7, "reviewed": 10}, {"trigger_threshold": 5}) is not None


def test_the_schema_doc_says_what_the_field_counts_and_the_released_name_stays():
    current = _field(SCHEMAS / "feedback_loop_stats.avsc", "reviewed_since_last_training")
    assert "added to the training set" in current["doc"] and not current["doc"].startswith("Reviewed")
    released = _field(SCHEMAS / "released" / "1" / "feedback_loop_stats.avsc", "reviewed_since_last_training")
    assert released["type"] == current["type"] == "long"
    threshold = _field(SCHEMAS / "deployment_configured.avsc", "trigger_threshold")
    assert "added to the training set" in threshold["doc"]
