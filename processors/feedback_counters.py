"""Feedback-loop counters per deployment, exact across crashes and restarts.

Counts live in records keyed ``deployment|topic|partition``: the counts contributed by one source
partition, plus the offset of the last event counted (``off``). A record is stored in one changelog
write (a faust table), so state and the offset it reflects are atomic: an event replayed after a crash
(offset <= ``off``) is not counted again, and one whose record was never written is counted on replay.
A deployment's totals are the sums over its records. ``reviewed_since_last_training`` is
``added_to_training`` minus the value it had at the deployment's last trigger (from the trigger's
evidence on the triggers topic).

This module is plain logic; the join stage (processors/feedback_join.py) feeds it, because only the
join knows whether a feedback event is new, a duplicate or a correction. ``register`` of this stage
publishes the Prometheus gauges' help text only.
"""
from __future__ import annotations

import threading
import time

from streams import catalog as ev
from streams.serde import new_event

FIELDS = ("predictions_logged", "feedback_received", "reviewed", "added_to_training", "feedback_dead_lettered")


class FeedbackCounters:
    def __init__(self, table=None, store=None):
        """``table``: mapping of record key -> record (a faust Table or a dict); ``store(partition, key,
        value)`` persists one record (default: plain assignment)."""
        self.table = table if table is not None else {}
        self._store = store or (lambda partition, key, value: self.table.__setitem__(key, value))
        self.baseline: dict[str, int] = {}  # added_to_training at the last trigger, per deployment
        self._lock = threading.Lock()

    @staticmethod
    def key(deployment: str, topic_key: str, partition: int) -> str:
        return f"{deployment}|{topic_key}|{partition}"

    def count(self, deployment: str, topic_key: str, partition: int, offset: int | None, **increments: int) -> bool:
        """Add ``increments`` for the event at ``offset`` of ``topic_key[partition]``; False (nothing
        counted) when that event was counted before. ``offset`` None: no replay guard."""
        key = self.key(deployment, topic_key, partition)
        record = self.table.get(key)
        record = dict(record) if record else {"off": -1, **{f: 0 for f in FIELDS}}
        if offset is not None:
            if offset <= record["off"]:
                return False
            record["off"] = offset
        for name, n in increments.items():
            if name not in FIELDS:
                raise KeyError(f"unknown counter {name!r}; known: {', '.join(FIELDS)}")
            record[name] = record.get(name, 0) + n
        self._store(partition, key, record)
        return True

    def totals(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for key, record in list(self.table.items()):
            deployment = key.rsplit("|", 2)[0]
            acc = out.setdefault(deployment, {f: 0 for f in FIELDS})
            for f in FIELDS:
                acc[f] += int(record.get(f, 0))
        return out

    def on_trigger(self, deployment: str, evidence: dict) -> None:
        """A trigger was emitted: reviewed_since_last_training restarts from its added_to_training."""
        raw = (evidence or {}).get("added_to_training")
        if raw is None:
            return
        with self._lock:
            self.baseline[deployment] = int(float(raw))

    def stats_record(self, deployment: str, totals: dict[str, int], trigger_threshold: int) -> dict:
        since = max(0, totals["added_to_training"] - self.baseline.get(deployment, 0))
        progress = min(1.0, since / trigger_threshold) if trigger_threshold > 0 else 0.0
        return new_event(ev.FEEDBACK_LOOP_STATS, deployment=deployment,
                         predictions_logged=totals["predictions_logged"], feedback_received=totals["feedback_received"],
                         reviewed=totals["reviewed"], added_to_training=totals["added_to_training"],
                         reviewed_since_last_training=since, trigger_threshold=int(trigger_threshold),
                         progress=float(progress), feedback_dead_lettered=totals["feedback_dead_lettered"])


class StatsEmitter:
    """Rate-limits FeedbackLoopStats per deployment: an event on change, at most one every
    ``min_interval_s``; changes in between are coalesced and sent by a later ``due``. ``urgent``
    changes (a threshold crossing) skip the limit, so triggers do not wait for it."""

    def __init__(self, min_interval_s: float, clock=time.monotonic):
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._urgent: set[str] = set()

    def changed(self, deployment: str) -> None:
        self._dirty.add(deployment)

    def urgent(self, deployment: str) -> None:
        """Send at the next ``due`` whatever the rate limit (e.g. the review threshold was crossed)."""
        self._dirty.add(deployment)
        self._urgent.add(deployment)

    def due(self) -> list[str]:
        now = self.clock()
        ready = [d for d in self._dirty
                 if d in self._urgent or now - self._last.get(d, float("-inf")) >= self.min_interval_s]
        self._urgent.difference_update(ready)
        for d in ready:
            self._dirty.discard(d)
            self._last[d] = now
        return ready


def register(app, ctx) -> None:
    """Counters are fed by the join stage (see the module docstring); nothing to register here."""
    return None
