"""The feedback join as plain logic (no Kafka): predictions and feedback of one prediction id meet
in one state record, whichever arrives first.

State per prediction id (one record, so one atomic changelog write per change):
``{"p": prediction or None, "f": joined feedback or None, "q": parked feedback list, "pt": partition,
"ts": ms of the last change}``, plus ``x`` (why a prediction with this id was dead-lettered) when one was.

* prediction first: kept in ``p`` until feedback arrives or ``join_ttl_s`` passes.
* feedback first: parked in ``q``; matched when the prediction arrives; dead-lettered
  (``unmatched_feedback``) after ``feedback_park_ttl_s``.
* duplicate feedback (same label again, or a replay of the same feedback event): counted once, no
  new labeled example.
* a correction (or any feedback with a different label after the first): a new LabeledExample for
  the same prediction id; consumers keep the latest per prediction id (the trainer does).
* a replay after a crash: ``f["src"]`` names the event that made the join, so the replayed event is
  recognised and re-emits its labeled example (at-least-once output; the counters do not double).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from streams import catalog as ev
from streams.serde import new_event


@dataclass
class JoinResult:
    """What one join step produced: LabeledExample records to publish, counts for the feedback counters
    (new reviews, new examples, duplicates, corrections, ignored; events), whether the prediction was a
    re-send, and ``dead_letters`` as (prediction id, compact feedback dict with ``why`` when known)."""
    examples: list = field(default_factory=list)
    """LabeledExample records to publish."""
    new_reviews: int = 0
    """Prediction ids reviewed for the first time by this event."""
    new_examples: int = 0
    """Of those, how many became training examples."""
    duplicates: int = 0
    corrections: int = 0
    ignored: int = 0
    """Feedback of a deployment whose feedback loop is off."""
    repeated: bool = False
    """A prediction whose id was already logged by another record (a re-send): ignored, not counted."""
    dead_letters: list = field(default_factory=list)
    """(prediction id, compact feedback) to dead-letter as unmatched_feedback; the feedback's ``why``,
    when set, is the reason (its prediction was dead-lettered), else the park TTL passed."""


def resolve_label(feedback: dict, predicted: str | None) -> str | None:
    """The true label a feedback event gives: label/correction carry it; a review says whether the
    prediction was right (and may carry the right label)."""
    if feedback["feedback_type"] in ("label", "correction"):
        return feedback["label"]
    if feedback.get("verdict") == "correct":
        return predicted
    return feedback.get("label")  # incorrect: only usable with the right label


def compact_prediction(value: dict, src: list) -> dict:
    """The state's compact form of a PredictionLogged ``value``: deployment, model_version, role,
    features, label, ``time`` (its event_time, epoch ms) and ``src`` ([topic key, partition, offset])."""
    return {"deployment": value["deployment"], "model_version": value["model_version"], "role": value["role"],
            "features": value["features"], "label": value.get("label"), "time": value["event_time"], "src": src}


def compact_feedback(value: dict, src: list, arrived_ms: int) -> dict:
    """The state's compact form of a FeedbackReceived ``value``: event_id, deployment, feedback_type,
    label, verdict, kind, reviewer, ``time`` (event_time, epoch ms), ``src`` ([topic key, partition, offset])
    and ``arrived`` (the processor's clock when it arrived, epoch ms)."""
    return {"event_id": value["event_id"], "deployment": value["deployment"], "feedback_type": value["feedback_type"],
            "label": value.get("label"), "verdict": value.get("verdict"), "time": value["event_time"],
            "src": src, "arrived": arrived_ms, "kind": value.get("kind"), "reviewer": value.get("reviewer")}


class FeedbackJoiner:
    """The feedback join over one state mapping (see the module docstring); each ``on_*`` call updates
    the prediction id's record through ``store`` and returns a :class:`JoinResult`."""
    def __init__(self, state, store, *, feedback_enabled=lambda deployment: True):
        """``state``: mapping prediction id -> record; ``store(partition, key, value_or_None)`` persists."""
        self.state = state
        self.store = store
        self.feedback_enabled = feedback_enabled

    def on_prediction(self, pid: str, value: dict, src: list, now_ms: int) -> JoinResult:
        """Fold a prediction (``src``: [topic key, partition, offset]; ``now_ms`` epoch ms): keep it,
        join the feedback parked for it; a second prediction with the same id from another record is ignored
        (``repeated``); the replay of the event that made a join re-emits its labeled example."""
        result = JoinResult()
        record = self.state.get(pid)
        record = dict(record) if record else {"p": None, "f": None, "q": [], "pt": src[1], "ts": now_ms}
        if record["p"] is not None and record["p"]["src"] != src:
            result.repeated = True
            return result  # a second prediction with the same id (e.g. an app's re-send): the first one stands
        replay = record["p"] is not None
        record.pop("x", None)  # a valid prediction after a rejected one with the same id
        record["p"] = compact_prediction(value, src)
        if replay and record["f"] is not None and record["f"]["src"] == src:
            # the join this very event made before a crash: emit again, count (guarded by offsets)
            self._emit(pid, record, record["f"], result, first=True)
        parked, record["q"] = record["q"], []
        for fb in parked:
            self._join(pid, record, fb, result, made_by=src)
        record["ts"] = now_ms
        self.store(record["pt"], pid, record)
        return result

    def on_rejected_prediction(self, pid: str, reason: str, partition: int, now_ms: int) -> JoinResult:
        """A prediction with this id was dead-lettered (``reason``): remember why (``x``, until the join
        TTL), so its feedback is dead-lettered at once as unmatched_feedback saying why, parked
        feedback included (returned in ``dead_letters`` as (pid, feedback with ``why``))."""
        result = JoinResult()
        record = self.state.get(pid)
        record = dict(record) if record else {"p": None, "f": None, "q": [], "pt": partition, "ts": now_ms}
        if record["p"] is not None:
            return result  # a valid prediction with this id stands
        why = f"its prediction {pid} was dead-lettered ({reason})"
        result.dead_letters = [(pid, {**fb, "why": why}) for fb in record["q"]]
        record.update(q=[], x=why, ts=now_ms)
        self.store(record["pt"], pid, record)
        return result

    def on_feedback(self, pid: str, value: dict, src: list, now_ms: int) -> JoinResult:
        """Fold a feedback event: ignored when the deployment's feedback loop is off, dead-lettered
        when its prediction was, parked while the prediction is unknown, else joined (a new label: a
        correction; the same label or event again: a duplicate)."""
        result = JoinResult()
        if not self.feedback_enabled(value["deployment"]):
            result.ignored = 1
            return result
        record = self.state.get(pid)
        record = dict(record) if record else {"p": None, "f": None, "q": [], "pt": src[1], "ts": now_ms}
        fb = compact_feedback(value, src, now_ms)
        if record["p"] is None and record.get("x"):
            result.dead_letters.append((pid, {**fb, "why": record["x"]}))
            return result
        if record["p"] is None:
            if all(q["event_id"] != fb["event_id"] for q in record["q"]):
                record["q"] = record["q"] + [fb]
                record["ts"] = now_ms
                self.store(record["pt"], pid, record)
            return result
        self._join(pid, record, fb, result, made_by=src)
        record["ts"] = now_ms
        self.store(record["pt"], pid, record)
        return result

    def _join(self, pid: str, record: dict, fb: dict, result: JoinResult, made_by: list) -> None:
        pred = record["p"]
        label = resolve_label(fb, pred["label"])
        joined = record["f"]
        if joined is None:
            record["f"] = {**fb, "label": label, "src": made_by}
            self._emit(pid, record, record["f"], result, first=True)
            return
        if joined["event_id"] == fb["event_id"]:
            if joined["src"] == made_by:  # replay of the event that made the join
                self._emit(pid, record, joined, result, first=True)
            else:
                result.duplicates += 1
            return
        if label is None or label == joined["label"]:
            result.duplicates += 1
            return
        # a correction: the new label replaces the earlier one
        record["f"] = {**fb, "label": label, "src": joined["src"]}
        result.corrections += 1
        self._emit(pid, record, record["f"], result, first=False)

    @staticmethod
    def _emit(pid: str, record: dict, joined: dict, result: JoinResult, first: bool) -> None:
        pred = record["p"]
        if first:
            result.new_reviews += 1
        label = joined["label"]
        if label is None:
            return  # an "incorrect" review without the right label: reviewed, not trainable
        if first:
            result.new_examples += 1
        result.examples.append(new_event(
            ev.LABELED_EXAMPLE, prediction_id=pid, deployment=pred["deployment"], model_version=pred["model_version"],
            role=pred["role"], features=pred["features"], predicted_label=pred["label"], label=label,
            correct=(label == pred["label"]), feedback_event_id=joined["event_id"], prediction_time=pred["time"],
            feedback_time=joined["time"]))

    def expire(self, now_ms: int, join_ttl_ms: int, park_ttl_ms: int) -> JoinResult:
        """Forget joins and predictions older than the join TTL; dead-letter parked feedback older
        than the park TTL."""
        result = JoinResult()
        for pid, record in list(self.state.items()):
            changed = False
            if record["q"]:
                keep = []
                for fb in record["q"]:
                    if now_ms - fb["arrived"] >= park_ttl_ms:
                        result.dead_letters.append((pid, fb))
                        changed = True
                    else:
                        keep.append(fb)
                record = {**record, "q": keep}
            if record["p"] is not None and now_ms - record["ts"] >= join_ttl_ms:
                record = {**record, "p": None, "f": None}
                changed = True
            if record.get("x") and now_ms - record["ts"] >= join_ttl_ms:
                record = {k: v for k, v in record.items() if k != "x"}
                changed = True
            if not changed:
                continue
            if record["p"] is None and not record["q"]:
                self.store(record["pt"], pid, None)
            else:
                self.store(record["pt"], pid, record)
        return result
