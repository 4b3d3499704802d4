"""Which labeled examples a retraining trigger compiles (the deployment's ``training_window``), and the
change point that since_change windows and the evidence wait start from; plain logic, no Kafka.

A :class:`LabelWindow` per deployment lives on the deployment's owner (the triggers stage). It keeps the
positions (labeled-examples partition, offset) of the deployment's recent labeled examples in the order
the stage sees them, numbered #1, #2, ... (every role: they are all training data), and a change point:

* **ADWIN cut**: river's ``drift.ADWIN`` on the champion's error stream (its primary labeled examples, 1
  = wrong). When it detects a change and the error went *up* (the mean of the items it kept is above the
  mean before), the change point is the first example of those it kept (its ``width``).
* **drift**: the first drift-detected DriftMeasured window after one that was not (a run of detected
  windows is one change): the change point is the first labeled example, from then on, whose
  prediction was made after the change time: the later of the window's ``window_start`` and the
  ``window_end`` of the latest window without drift (prediction times and window bounds are the same
  app clock); examples of older predictions that arrive later are not counted as post-change.
* **decay** with no change point known: the start of the rolling performance window that decayed (a
  coarse point: a window of 200 decays when a few dozen of its examples are post-change), replaced by
  an ADWIN cut or a drift signal until a trigger fired on it.

A signal while the change point still gathers its evidence (fewer than min_post_change_labels after it
and no trigger fired on it) is the same change and does not move it (except a decay point, above); any
later signal does. A promotion restarts ADWIN (another
model's errors) and keeps the change point: the champion changed, the concept did not; but when a trigger
already fired on that change point, a performance decay of the new champion starts a new one at the first
of its decayed window (a champion promoted just as the concept changed again begins with a high error,
and ADWIN on its own error stream sees no rise).

**Evidence first**: drift and performance-decay triggers (and, with since_change windows, every
automatic trigger once a change point is known) fire only when ``min_post_change_labels`` examples
followed the change point, then again each time that count doubles (200, 400, 800, ...) while the
reason still holds (decay evidence, or the drift stage still detecting drift against its reference,
which it resets after a promotion). 0 turns the wait off. **Window growth**: with since_change windows,
once a trigger fired on a change point, the triggers stage retrains again each time the post-change
count doubles, as long as the doubled window fits under ``training_window_labels``, even when the
reason no longer holds (a recovered champion trained on 200 labels is not the best model 1,600 labels
later): :meth:`LabelWindow.growth_due`.

Windows (:meth:`LabelWindow.snapshot`), per labeled-examples partition ``[start_offset, end_offset)``:
``all``: from 0; ``sliding``: from the first of the deployment's last ``training_window_labels`` examples
(``training_window_seconds`` > 0: those whose LabeledExample event_time is within that many seconds of
now); ``since_change``: from the first example after the change point, capped to the latest
``training_window_labels`` (0: no cap), and the sliding window when no change point is known. End
offsets are the log ends read when the trigger fires (examples logged after the stage's latest one are
included; they are the newest). A partition without an example in the window gets an empty range
(start = end).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from river import drift as river_drift

WINDOWS = ("all", "sliding", "since_change")
MAX_POSITIONS = 200_000
"""Positions kept per deployment (a window larger than this starts at the oldest one kept)."""


@dataclass
class ChangePoint:
    """A detected change: ``seq`` is the number of the first labeled example after it (it may be in the
    future: a drift's first post-change label not seen yet); ``min_prediction_time`` (drift signals)
    excludes examples of older predictions; ``post_change_labels`` counts the examples after it;
    ``next_due``: the count at which the next evidence-gated trigger may fire (doubles after each)."""

    seq: int
    signal: str
    description: str
    min_prediction_time: int | None = None
    post_change_labels: int = 0
    next_due: int = 0
    fired: int = 0

    def counts(self, seq: int, prediction_time: int | None) -> bool:
        """Whether the example numbered ``seq`` (with its prediction time, epoch ms) lies after the change."""
        return seq >= self.seq and (self.min_prediction_time is None or prediction_time is None
                                    or prediction_time >= self.min_prediction_time)


@dataclass
class Position:
    """One labeled example's place: ``seq`` (its number among the deployment's examples), partition and
    offset on labeled-examples, its prediction time and event time (epoch ms; None when unknown)."""
    seq: int
    partition: int
    offset: int
    prediction_time: int | None
    event_time: int | None


class LabelWindow:
    """One deployment's labeled-example positions, champion error stream and change point.

    ``adwin_delta``: ADWIN's confidence (river's default 0.002). ``max_positions``: positions kept.
    ``min_post_change_labels``: the deployment's setting (the stage keeps it current)."""

    def __init__(self, *, adwin_delta: float = 0.002, max_positions: int = MAX_POSITIONS,
                 min_post_change_labels: int = 200):
        if max_positions < 1:
            raise ValueError(f"max_positions: must be positive, got {max_positions}")
        self.adwin_delta = adwin_delta
        self.min_post_change_labels = min_post_change_labels
        self.positions: deque[Position] = deque(maxlen=max_positions)
        self.primary_seqs: deque[int] = deque(maxlen=max_positions)   # seq of each champion primary example
        self.seen = 0                                                  # labeled examples seen (the last seq)
        self.change: ChangePoint | None = None
        self.drift_active = False          # the drift stage's latest window detected drift
        self.drift_evidence: dict | None = None
        self.clean_until: int | None = None    # window_end of the latest window without drift
        self.decay_restarts = False            # a champion promoted after a trigger on the change point
        self._adwin = river_drift.ADWIN(delta=adwin_delta)

    # -- folding ------------------------------------------------------------------------------------
    def add(self, partition: int, offset: int, *, prediction_time: int | None = None, event_time: int | None = None,
            champion_correct: bool | None = None) -> ChangePoint | None:
        """One labeled example of the deployment at (``partition``, ``offset``); ``champion_correct``:
        whether the champion's primary prediction was right (None: another role or model, not in the
        error stream). Returns the new change point when ADWIN cut on a rise of the error, else None."""
        self.seen += 1
        seq = self.seen
        self.positions.append(Position(seq, int(partition), int(offset), prediction_time, event_time))
        cp = self.change
        if cp is not None and cp.counts(seq, prediction_time):
            cp.post_change_labels += 1
        if champion_correct is None:
            return None
        self.primary_seqs.append(seq)
        before = self._adwin.estimation
        self._adwin.update(0.0 if champion_correct else 1.0)
        if not self._adwin.drift_detected or self._adwin.estimation <= before:
            return None
        kept = int(self._adwin.width)
        first = self.primary_seqs[-kept] if 0 < kept <= len(self.primary_seqs) else seq
        return self.signal(first, "adwin", f"ADWIN cut on the champion's error stream at labeled example #{first} "
                                           f"(error {before:.3f} -> {self._adwin.estimation:.3f} over the last {kept})")

    def on_drift(self, detected: bool, window_start: int | None = None, evidence: dict | None = None, *,
                 window_end: int | None = None) -> ChangePoint | None:
        """A DriftMeasured window of the deployment (its window_start/window_end: prediction times, ms).
        The first detected window after one that was not is a change signal: the change is at the later
        of its start and the end of the last window without drift (windows are filled in the order the
        stage reads partitions, so one window's time span can overlap the one before). Returns the
        change point it made, or None."""
        was, self.drift_active = self.drift_active, bool(detected)
        if not detected:
            self.drift_evidence = None
            if window_end is not None:
                self.clean_until = int(window_end)
            return None
        self.drift_evidence = evidence
        if was:
            return None
        start = int(window_start) if window_start is not None else None
        if self.clean_until is not None and (start is None or start <= self.clean_until):
            start = self.clean_until + 1
        first = self.seen + 1
        if start is not None:   # the first example seen of a prediction at or after the window's start
            first = next((p.seq for p in self.positions if p.prediction_time is not None and p.prediction_time >= start),
                         first)
        return self.signal(first, "drift", f"drift detected by the drift stage from prediction time {start} "
                                           f"(first labeled example #{first})", min_prediction_time=start)

    def on_decay(self, window: int) -> ChangePoint | None:
        """Performance decay over the champion's last ``window`` examples with no change point known, or
        the decay of a champion promoted after a trigger fired on the current change point
        (``decay_restarts``): the change point is the first of them."""
        if (self.change is not None and not self.decay_restarts) or not self.primary_seqs:
            return None
        first = self.primary_seqs[-min(window, len(self.primary_seqs))]
        return self.signal(first, "decay", f"performance decay over the champion's last {window} labeled examples "
                                           f"(from labeled example #{first})")

    def on_promotion(self) -> None:
        """A new champion: its error stream starts afresh, and so does the drift stage (its reference is
        the first window after the promotion), so a pending drift reason ends; the change point stays, but
        once a trigger fired on it, a decay of the new champion is a new change (:meth:`on_decay`): a
        champion promoted just as the concept changed again starts with a high error, which ADWIN on its
        own error stream never sees rise."""
        self._adwin = river_drift.ADWIN(delta=self.adwin_delta)
        self.drift_active, self.drift_evidence = False, None
        if self.change is not None and self.change.fired > 0:
            self.decay_restarts = True

    def signal(self, first_seq: int, signal: str, description: str, *, min_prediction_time: int | None = None
               ) -> ChangePoint | None:
        """Make (first_seq, ...) the change point unless the current one still gathers its first
        ``min_post_change_labels`` examples with no trigger fired yet (the same change seen again).
        Returns the new change point or None."""
        cp = self.change
        if cp is not None and cp.fired == 0 and cp.post_change_labels < self.min_post_change_labels \
                and not (cp.signal == "decay" and signal != "decay"):
            return None
        self.decay_restarts = False
        new = ChangePoint(first_seq, signal, description, min_prediction_time)
        new.post_change_labels = sum(1 for p in self.positions if new.counts(p.seq, p.prediction_time))
        self.change = new
        return new

    # -- deciding -----------------------------------------------------------------------------------
    def waiting_for(self, min_post_change_labels: int, *, doubling: bool = True) -> int | None:
        """Post-change labels still missing before an evidence-gated trigger may fire (None: none
        missing, or no change point known). ``doubling``: after a trigger on this change point, wait
        until the count doubled (drift, decay); else only for the minimum."""
        cp = self.change
        if cp is None or min_post_change_labels <= 0:
            return None
        due = max(cp.next_due if doubling else 0, min_post_change_labels)
        return None if cp.post_change_labels >= due else due - cp.post_change_labels

    def growth_due(self, cap: int) -> dict | None:
        """Evidence of a **window-growth** retrain, or None: after a trigger fired on the current change
        point, its since_change window has doubled (post_change_labels >= next_due) and the doubled window
        still fits under ``cap`` (the deployment's training_window_labels; 0: no cap), whether or not the
        signal that found the change still holds. A model trained on 200 post-change labels serves until
        one trained on 400, 800, 1,600 replaces it (each through the gate and the shadow comparison)."""
        cp = self.change
        if cp is None or cp.fired == 0 or cp.next_due <= 0 or cp.post_change_labels < cp.next_due:
            return None
        if cap > 0 and cp.next_due > cap:
            return None
        return {"window_growth": f"{cp.post_change_labels} post-change labels >= {cp.next_due} "
                                 f"(the window doubled since trigger {cp.fired} on this change point)",
                "change_point_signal": cp.signal}

    def growth_reason(self) -> str:
        """The trigger reason a window-growth retrain carries: the signal that found its change point
        (drift for a drift signal, performance_decay for an ADWIN cut or a decay window)."""
        return "drift" if self.change is not None and self.change.signal == "drift" else "performance_decay"

    def fired(self, min_post_change_labels: int) -> None:
        """A trigger fired with the current change point: the next one waits until the count doubles."""
        cp = self.change
        if cp is None:
            return
        cp.fired += 1
        due = max(cp.next_due, min_post_change_labels, 1)
        while due <= cp.post_change_labels:
            due *= 2
        cp.next_due = due

    def _members(self, kind: str, labels: int, seconds: int, now_ms: int) -> list[Position] | None:
        """The positions a window holds (None: every example, the ``all`` window)."""
        if kind == "all":
            return None
        members = list(self.positions)
        if kind == "since_change" and self.change is not None:
            cp = self.change
            members = [p for p in members if cp.counts(p.seq, p.prediction_time)]
        elif seconds > 0:
            since = now_ms - seconds * 1000
            members = [p for p in members if p.event_time is not None and min(p.event_time, now_ms) >= since]
        elif labels <= 0:
            return None
        if labels > 0:
            members = members[-labels:]
        return members

    def snapshot(self, kind: str, ends: dict[int, int], *, labels: int, seconds: int = 0, now_ms: int = 0
                 ) -> tuple[list[dict], dict]:
        """(snapshot, evidence) of a trigger: ``[{partition, start_offset, end_offset}]`` for every
        partition of ``ends`` (partition -> log end offset) and the window's evidence
        (training_window, window_labels; since_change with a change point: change_point,
        change_point_offsets, post_change_labels). ValueError for an unknown ``kind``."""
        if kind not in WINDOWS:
            raise ValueError(f"training_window: must be one of {WINDOWS}, got {kind!r}")
        members = self._members(kind, labels, seconds, now_ms)
        evidence: dict = {}
        if members is None:
            evidence.update(training_window="all", window_labels=self.seen)
            return [{"partition": p, "start_offset": 0, "end_offset": ends[p]} for p in sorted(ends)], evidence
        snap = offsets_of(members, ends)
        cp = self.change
        if kind == "since_change" and cp is not None:
            evidence.update(training_window="since_change", window_labels=len(members), change_point=cp.description,
                            change_point_signal=cp.signal, post_change_labels=cp.post_change_labels,
                            change_point_offsets=format_offsets(offsets_of(
                                [p for p in self.positions if cp.counts(p.seq, p.prediction_time)], ends)))
        else:
            evidence.update(training_window="sliding", window_labels=len(members))
            if kind == "since_change":
                evidence["change_point"] = "none known: the sliding window"
        if seconds > 0 and kind == "sliding":
            evidence["training_window_seconds"] = seconds
        return snap, evidence


def offsets_of(members, ends: dict[int, int]) -> list[dict]:
    """``[{partition, start_offset, end_offset}]`` for every partition of ``ends``: from the lowest offset
    of ``members`` (positions with .partition and .offset) in the partition to its end; a partition
    without a member gets the empty range [end, end)."""
    starts: dict[int, int] = {}
    for p in members:
        if p.partition not in starts or p.offset < starts[p.partition]:
            starts[p.partition] = p.offset
    return [{"partition": p, "start_offset": min(starts.get(p, ends[p]), ends[p]), "end_offset": ends[p]}
            for p in sorted(ends)]


def format_offsets(snapshot: list[dict]) -> str:
    """``"partition:start_offset,..."``: a window's start per partition, as trigger evidence (the change
    point's positions: later triggers and ``ctloop trigger`` start since_change windows there)."""
    return ",".join(f"{int(p['partition'])}:{int(p['start_offset'])}" for p in snapshot)


def parse_offsets(text: str) -> dict[int, int]:
    """partition -> offset of :func:`format_offsets` text. ValueError naming change_point_offsets."""
    try:
        return {int(a): int(b) for a, b in (part.split(":") for part in text.split(",") if part)}
    except ValueError as exc:
        raise ValueError(f"change_point_offsets: expected 'partition:offset,...', got {text!r}") from exc


def window_settings(dep_settings: dict) -> tuple[str, int, int, int]:
    """(training_window, training_window_labels, training_window_seconds, min_post_change_labels) of a
    deployment's settings; settings written before these fields existed get the schema defaults."""
    return (dep_settings.get("training_window") or "since_change",
            int(dep_settings.get("training_window_labels") if dep_settings.get("training_window_labels") is not None
                else 2000),
            int(dep_settings.get("training_window_seconds") or 0),
            int(dep_settings.get("min_post_change_labels") if dep_settings.get("min_post_change_labels") is not None
                else 200))
