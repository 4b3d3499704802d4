"""The demo's phases as a state machine: pure (no Kafka, no threads, no clock of its own).

The streaming loop of ``infra.demo.runner`` feeds it what it observed at each served event (the
position in the scenario, the faulty trainer's latest run, the labeled examples available, the policy's
promotions, the clock against the deadline) and carries out the ``Effect`` list each transition returns,
in order: progress lines, problems, and the actions on the loop's components (publish the
fault-injection trigger, stop the faulty trainer, start the regular trainer, stop streaming).

The fault-injection part moves through ``Stage``::

    BEFORE_FAULT --(position >= fault_at and enough labels)--> FAULT_INJECTED
    FAULT_INJECTED --(the run failed)--> FAULT_RETRY --(retry_at reached)--> FAULT_INJECTED (at most 3 tries)
    any --(the faulty candidate registered: it passed the gate)--> FAULTY_IN_SHADOW (the faulty trainer stops)
    any --(the faulty candidate rejected, at the gate or in shadow)--> FAULT_DONE
    any --(3 tries failed)--> FAULT_DONE (a problem)
    any --(deadline passed / processors worker died)--> STOPPED (a problem; streaming stops)

Alongside it counts the drifts reached (``drifts_seen``: the concept phase, 0 before the first drift)
and starts the regular trainer once, when the faulty one has stopped or at the first drift at the latest.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Iterable

from streams import catalog as ev

FAULT_RETRY_EVENTS = 300
"""Events between a failed faulty run and the next fault-injection trigger (also the margin, in events,
by which the first try must leave the cooldown clear of the first drift)."""
FAULT_MAX_TRIES = 3
"""Fault-injection triggers published at most (a fourth failed run is not waited for)."""


class Stage(enum.Enum):
    """Where the demo's fault injection stands (``STOPPED``: streaming ended before the scenario did)."""

    BEFORE_FAULT = "before fault injection"
    """No fault-injection trigger published yet."""
    FAULT_INJECTED = "fault injected"
    """A manual trigger is published; the faulty trainer's run is pending or running."""
    FAULT_RETRY = "fault retry"
    """The faulty run failed; another trigger follows at ``DemoPhases.retry_at``."""
    FAULTY_IN_SHADOW = "faulty candidate in shadow"
    """The faulty candidate passed the evaluation gate; the shadow comparison must reject it."""
    FAULT_DONE = "fault done"
    """The bad candidate was rejected (or 3 tries failed): only drifts and promotions remain."""
    STOPPED = "stopped"
    """The deadline passed or the processors worker died: streaming stops."""


class RunOutcome(enum.Enum):
    """Outcome of a trainer's latest run, from the lifecycle and update events."""

    RUNNING = "running"
    FAILED = "failed"
    REGISTERED = "registered"
    """Passed the evaluation gate (now in shadow)."""
    REJECTED = "rejected"
    """Rejected at the gate (model-lifecycle) or in shadow (model-updates)."""


class Action(enum.Enum):
    """What an ``Effect`` asks of the runner."""

    SAY = "say"
    """Print ``Effect.text`` as a progress line."""
    PROBLEM = "problem"
    """Record ``Effect.text`` as a problem of the run (the demo is then not ok)."""
    PUBLISH_FAULT_TRIGGER = "publish fault trigger"
    """Publish a manual TrainingTriggered (the faulty trainer takes it)."""
    STOP_FAULTY = "stop faulty trainer"
    """Ask the faulty trainer to stop (without waiting)."""
    START_REGULAR = "start regular trainer"
    """Stop the faulty trainer (waiting) and start the regular one."""
    STOP_STREAMING = "stop streaming"
    """Serve no further event."""


@dataclass(frozen=True)
class Effect:
    """One output of a transition: an ``Action`` and, for SAY and PROBLEM, its text."""

    action: Action
    text: str = ""


def _say(text: str) -> Effect:
    return Effect(Action.SAY, text)


def _problem(text: str) -> Effect:
    return Effect(Action.PROBLEM, text)


def faulty_run_outcome(events: Iterable[tuple[str, dict]], trainer_id: str) -> tuple[RunOutcome | None, int]:
    """The outcome of ``trainer_id``'s latest run and how many runs it started.

    ``events``: (event type, value) pairs of one deployment in log order (TrainingRunStarted,
    TrainingRunFailed, ModelRegistered, CandidateRejected; others are ignored). Returns (None, 0) before
    its first run. A rejection wins over a failure, a failure over a registration (as the events of one
    run can only be registered then rejected in shadow)."""
    events = list(events)
    started = [v["run_id"] for t, v in events if t == ev.TRAINING_RUN_STARTED and v.get("trainer_id") == trainer_id]
    if not started:
        return None, 0
    latest = started[-1]
    of_latest = {t for t, v in events if v.get("run_id") == latest}
    for event_type, outcome in ((ev.CANDIDATE_REJECTED, RunOutcome.REJECTED),
                                (ev.TRAINING_RUN_FAILED, RunOutcome.FAILED),
                                (ev.MODEL_REGISTERED, RunOutcome.REGISTERED)):
        if event_type in of_latest:
            return outcome, len(started)
    return RunOutcome.RUNNING, len(started)


@dataclass
class DemoPhases:
    """The demo's phase machine over one scenario (positions are event indexes in the scenario).

    ``drift_points``: the scenario's known drift points (events, ascending; may be empty);
    ``concepts``: names of the scenario's concepts (for the DRIFT lines); ``stream_length``: events in
    the scenario; ``fault_at``: first event at which the fault-injection trigger may be published;
    ``cooldown_s`` (seconds) and ``rate`` (events/s): the trigger cooldown, so that the first try is
    published early enough for its cooldown to end before the first drift; ``min_training_examples``:
    labeled examples a trigger needs; ``timeout_s``: streaming deadline, seconds after ``started``
    (a ``time.monotonic`` reading)."""

    drift_points: list[int]
    concepts: list[str]
    stream_length: int
    fault_at: int
    cooldown_s: float
    rate: float
    min_training_examples: int
    timeout_s: float
    started: float
    stage: Stage = Stage.BEFORE_FAULT
    drifts_seen: int = 0
    """Drift points reached so far (the concept phase)."""
    fault_tries: int = 0
    """Fault-injection triggers published."""
    faulty_runs: int = 0
    """Runs the faulty trainer started (as last observed)."""
    retry_at: int | None = None
    """Event of the next fault-injection try after a failed run (FAULT_RETRY only)."""
    regular_started: bool = False
    promoted: set[str] = field(default_factory=set)
    """Model versions whose promotion by the policy was announced."""

    @property
    def deadline(self) -> float:
        """The streaming deadline (``time.monotonic`` seconds)."""
        return self.started + self.timeout_s

    @property
    def fault_pending(self) -> bool:
        """Whether the fault injection still needs the faulty trainer's progress (not done, not stopped)."""
        return self.stage not in (Stage.FAULT_DONE, Stage.STOPPED)

    @property
    def latest_first_try(self) -> float:
        """The last event at which the first try waits for labels: its cooldown (``cooldown_s * rate``
        events) plus ``FAULT_RETRY_EVENTS`` must end before the first drift (or the stream's end)."""
        first = self.drift_points[0] if self.drift_points else self.stream_length
        return first - self.cooldown_s * self.rate - FAULT_RETRY_EVENTS

    # --- transitions ------------------------------------------------------------------------------

    def on_clock(self, position: int, now: float) -> list[Effect]:
        """Before serving event ``position`` at ``now`` (``time.monotonic`` seconds): past the deadline,
        STOPPED with a problem and STOP_STREAMING."""
        if now <= self.deadline:
            return []
        self.stage = Stage.STOPPED
        return [_problem(f"streaming stopped at the deadline ({self.timeout_s:.0f}s) at event {position}"),
                Effect(Action.STOP_STREAMING)]

    def on_worker_exit(self, exit_code: int | None, log_path: str, excerpt: str) -> list[Effect]:
        """The processors worker died (its exit code, log file and the crash excerpt of its log):
        STOPPED with a problem and STOP_STREAMING."""
        self.stage = Stage.STOPPED
        return [_problem(f"processor worker died (exit {exit_code}); log {log_path}:\n{excerpt}"),
                Effect(Action.STOP_STREAMING)]

    def on_fault_progress(self, position: int, outcome: RunOutcome | None, runs_started: int,
                          added_to_training: int) -> list[Effect]:
        """At event ``position``: the faulty trainer's latest run ``outcome`` (None before its first),
        the runs it started, and the labeled examples a trigger could train on now. Publishes the
        first try once ``position >= fault_at`` and either enough examples or ``latest_first_try``
        reached; a failed run schedules a retry ``FAULT_RETRY_EVENTS`` later (``FAULT_MAX_TRIES`` in
        all); a registered candidate stops the faulty trainer; a rejected one ends the fault
        injection. No effect once FAULT_DONE or STOPPED."""
        if not self.fault_pending:
            return []
        self.faulty_runs = runs_started
        out: list[Effect] = []
        if outcome is RunOutcome.REJECTED:
            out.append(_say("the bad candidate (trained on noisy labels) was rejected"))
            self.stage = Stage.FAULT_DONE
        elif outcome is RunOutcome.REGISTERED:
            out.append(Effect(Action.STOP_FAULTY))  # its candidate is in shadow: the regular trainer takes over
            self.stage = Stage.FAULTY_IN_SHADOW
        elif outcome is RunOutcome.FAILED and self._latest_try_failed() and self.fault_tries >= FAULT_MAX_TRIES:
            out.append(_problem(f"the faulty trainer's runs failed {FAULT_MAX_TRIES} times: no bad candidate to reject"))
            self.stage = Stage.FAULT_DONE
        elif outcome is RunOutcome.FAILED and self.retry_at is None and self._latest_try_failed():
            self.retry_at = position + FAULT_RETRY_EVENTS
            self.stage = Stage.FAULT_RETRY
            out.append(_say("the faulty run failed (too little data?); another trigger follows"))
        enough = added_to_training >= self.min_training_examples or position >= self.latest_first_try
        first_try = outcome is None and self.fault_tries == 0 and position >= self.fault_at and enough
        retry = (outcome is RunOutcome.FAILED and self.retry_at is not None and position >= self.retry_at
                 and self.fault_tries < FAULT_MAX_TRIES)
        if self.stage is not Stage.FAULT_DONE and (first_try or retry):
            self.fault_tries += 1
            self.retry_at = None
            self.stage = Stage.FAULT_INJECTED
            out += [Effect(Action.PUBLISH_FAULT_TRIGGER),
                    _say(f"fault injection at event {position}: manual trigger published; the faulty trainer takes it")]
        if self.stage is Stage.FAULT_DONE:
            out.append(Effect(Action.STOP_FAULTY))
        return out

    def _latest_try_failed(self) -> bool:
        """Whether the failed run is the latest try's (a retry's run may not have started yet)."""
        return self.faulty_runs >= self.fault_tries

    def on_trainers(self, faulty_alive: bool) -> list[Effect]:
        """After the fault-injection effects: once the faulty trainer has stopped, START_REGULAR (once)."""
        if self.regular_started or faulty_alive:
            return []
        self.regular_started = True
        return [Effect(Action.START_REGULAR)]

    def on_event(self, position: int, concept: int) -> list[Effect]:
        """Event ``position`` (of concept index ``concept``) is about to be served: at a drift point,
        START_REGULAR (if not yet) and a DRIFT line; ``drifts_seen`` counts it."""
        if self.drifts_seen >= len(self.drift_points) or position != self.drift_points[self.drifts_seen]:
            return []
        out = [] if self.regular_started else [Effect(Action.START_REGULAR)]
        self.regular_started = True
        self.drifts_seen += 1
        out.append(_say(f"DRIFT {self.drifts_seen} at event {position}: concept {self.concepts[concept]}"))
        return out

    def on_promotions(self, position: int, versions: Iterable[str]) -> list[Effect]:
        """``versions``: the model versions promoted by the policy so far (log order); a line for each
        one not announced yet, with the events since the latest drift reached."""
        out = []
        for version in versions:
            if version in self.promoted:
                continue
            self.promoted.add(version)
            since = (f", {position - self.drift_points[self.drifts_seen - 1]} events after drift {self.drifts_seen}"
                     if self.drifts_seen > 0 else "")
            out.append(_say(f"the policy promoted {version} (event {position}{since})"))
        return out
