"""The shadow join: primary predictions, shadow predictions and feedback joined by prediction id into
small *outcomes* (plain JSON-serialisable dicts). Pure logic, no Kafka: processors/shadow_comparison.py
runs it per partition and sends the outcomes to the internal outcomes topic (docs/SERVING.md, "Shadow
comparison"); processors/shadow_stats.py aggregates the ``pair`` / ``labeled_pair`` outcomes and
processors/rollback_watch.py the ``primary`` ones.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Joined:
    primary: dict | None = None      # {deployment, version, label, latency_ms, time, role}
    shadow: dict | None = None
    truth: str | None = None         # the true label, once known
    primary_incorrect: bool = False  # review said "incorrect" without giving the label
    verdict_correct: bool = False    # review said "correct" before the primary arrived
    pair_emitted: bool = False
    labeled_pair_emitted: bool = False
    primary_emitted: bool = False


class PredictionJoin:
    """Join by prediction id, bounded: the oldest open entries are evicted past ``max_entries``.

    Methods return the outcomes that became complete:

    * ``{"kind": "pair", deployment, primary_version, shadow_version, agree, primary_latency_ms,
      shadow_latency_ms}`` once a primary and a shadow result are both in;
    * ``{"kind": "labeled_pair", ..., truth, primary_label, shadow_label}`` once feedback is in too;
    * ``{"kind": "primary", deployment, version, role, correct, time}`` once a primary (or canary)
      prediction has feedback (drives live accuracy per version, hence rollback).

    The first usable feedback decides; later corrections of an already counted prediction are ignored.
    """

    def __init__(self, max_entries: int = 200_000):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Joined] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, pid: str) -> _Joined:
        entry = self._entries.get(pid)
        if entry is None:
            entry = self._entries[pid] = _Joined()
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self.evicted += 1
        return entry

    def on_prediction(self, value: dict) -> list[dict]:
        """Fold a primary, canary or shadow PredictionLogged value; returns the outcomes it completes
        (dicts with ``kind`` pair, labeled_pair or primary)."""
        entry = self._entry(value["prediction_id"])
        side = {"deployment": value["deployment"], "version": value["model_version"], "label": value.get("label"),
                "latency_ms": float(value.get("latency_ms") or 0.0), "time": int(value["event_time"]),
                "role": value["role"]}
        if value["role"] == "shadow":
            if entry.shadow is None:
                entry.shadow = side
        elif entry.primary is None:
            entry.primary = side
            if entry.verdict_correct and entry.truth is None:
                entry.truth = side["label"]
        return self._complete(value["prediction_id"], entry)

    def on_feedback(self, value: dict) -> list[dict]:
        """Fold a FeedbackReceived value (labels, corrections and verdicts give the truth); returns the
        outcomes it completes (dicts with ``kind`` pair, labeled_pair or primary)."""
        entry = self._entry(value["prediction_id"])
        if not (entry.primary_emitted or entry.labeled_pair_emitted):
            ftype, label = value["feedback_type"], value.get("label")
            if ftype in ("label", "correction"):
                entry.truth = label
            elif value.get("verdict") == "correct":
                if entry.primary is not None:
                    entry.truth = entry.primary["label"]
                else:
                    entry.verdict_correct = True
            elif label is not None:  # review "incorrect" with the right label
                entry.truth = label
            else:
                entry.primary_incorrect = True
        return self._complete(value["prediction_id"], entry)

    def _complete(self, pid: str, e: _Joined) -> list[dict]:
        out = []
        p, s = e.primary, e.shadow
        if p is not None and s is not None and not e.pair_emitted and p["role"] == "primary":
            e.pair_emitted = True
            out.append({"kind": "pair", "prediction_id": pid, "deployment": p["deployment"],
                        "primary_version": p["version"],
                        "shadow_version": s["version"], "agree": p["label"] == s["label"],
                        "primary_latency_ms": p["latency_ms"], "shadow_latency_ms": s["latency_ms"]})
        if p is not None and s is not None and e.truth is not None and not e.labeled_pair_emitted \
                and p["role"] == "primary":
            e.labeled_pair_emitted = True
            out.append({"kind": "labeled_pair", "prediction_id": pid, "deployment": p["deployment"],
                        "primary_version": p["version"],
                        "shadow_version": s["version"], "truth": e.truth, "primary_label": p["label"],
                        "shadow_label": s["label"]})
        if p is not None and not e.primary_emitted and (e.truth is not None or e.primary_incorrect):
            e.primary_emitted = True
            correct = False if e.truth is None else p["label"] == e.truth
            out.append({"kind": "primary", "deployment": p["deployment"], "version": p["version"],
                        "role": p["role"], "correct": correct, "time": p["time"]})
        if e.primary_emitted and e.labeled_pair_emitted:  # nothing more can come of it
            self._entries.pop(pid, None)
        return out
