"""The demo's phase machine (infra/demo/phases.py): every transition, its state and its effects (no Kafka)."""
from __future__ import annotations

import pytest

from infra.demo.phases import (FAULT_MAX_TRIES, FAULT_RETRY_EVENTS, Action, DemoPhases, Effect, RunOutcome, Stage,
                               faulty_run_outcome)
from streams import catalog as ev

FAULTY = "trainer-faulty"
SAY, PROBLEM, PUBLISH = Action.SAY, Action.PROBLEM, Action.PUBLISH_FAULT_TRIGGER
STOP_FAULTY, START_REGULAR, STOP_STREAMING = Action.STOP_FAULTY, Action.START_REGULAR, Action.STOP_STREAMING


def phases(**overrides) -> DemoPhases:
    # the quick demo's figures: drifts at 3000 and 6000, fault at 800, cooldown 5 s at 75 events/s
    base = dict(drift_points=[3000, 6000], concepts=["A", "B", "C"], stream_length=9000, fault_at=800,
                cooldown_s=5, rate=75.0, min_training_examples=150, timeout_s=300.0, started=1000.0)
    base.update(overrides)
    return DemoPhases(**base)


def actions(effects: list[Effect]) -> list[Action]:
    return [e.action for e in effects]


def texts(effects: list[Effect], action: Action = SAY) -> list[str]:
    return [e.text for e in effects if e.action is action]


# --- the faulty trainer's latest run, from the monitor's events --------------------------------------

def started(run_id, trainer_id=FAULTY):
    return ev.TRAINING_RUN_STARTED, {"run_id": run_id, "trainer_id": trainer_id}


def test_faulty_run_outcome_reads_the_latest_run_of_the_faulty_trainer_only():
    assert faulty_run_outcome([], FAULTY) == (None, 0)
    assert faulty_run_outcome([started("r0", "trainer-1")], FAULTY) == (None, 0)
    assert faulty_run_outcome([started("r1")], FAULTY) == (RunOutcome.RUNNING, 1)
    failed = [started("r1"), (ev.TRAINING_RUN_FAILED, {"run_id": "r1"})]
    assert faulty_run_outcome(failed, FAULTY) == (RunOutcome.FAILED, 1)
    # a retry's run started: the earlier failure no longer counts
    assert faulty_run_outcome(failed + [started("r2")], FAULTY) == (RunOutcome.RUNNING, 2)
    registered = failed + [started("r2"), (ev.MODEL_REGISTERED, {"run_id": "r2", "model_version": "v2"})]
    assert faulty_run_outcome(registered, FAULTY) == (RunOutcome.REGISTERED, 2)
    # rejected in shadow after it registered: the rejection wins
    in_shadow = registered + [(ev.CANDIDATE_REJECTED, {"run_id": "r2", "stage": "shadow"})]
    assert faulty_run_outcome(in_shadow, FAULTY) == (RunOutcome.REJECTED, 2)
    # another trainer's events about another run do not change the faulty run's outcome
    assert faulty_run_outcome(failed + [started("r9", "trainer-1"), (ev.MODEL_REGISTERED, {"run_id": "r9"})],
                              FAULTY) == (RunOutcome.FAILED, 1)


# --- fault injection -------------------------------------------------------------------------------

def test_the_fault_trigger_waits_for_fault_at_and_enough_labeled_examples():
    p = phases()
    assert p.stage is Stage.BEFORE_FAULT
    assert p.on_fault_progress(799, None, 0, added_to_training=10_000) == []
    assert p.on_fault_progress(800, None, 0, added_to_training=149) == []
    assert p.stage is Stage.BEFORE_FAULT and p.fault_tries == 0
    out = p.on_fault_progress(801, None, 0, added_to_training=150)
    assert actions(out) == [PUBLISH, SAY]
    assert texts(out) == ["fault injection at event 801: manual trigger published; the faulty trainer takes it"]
    assert p.stage is Stage.FAULT_INJECTED and p.fault_tries == 1
    # published once: the run is pending (no outcome yet), then running
    assert p.on_fault_progress(802, None, 0, added_to_training=500) == []
    assert p.on_fault_progress(803, RunOutcome.RUNNING, 1, added_to_training=500) == []
    assert p.fault_tries == 1 and p.faulty_runs == 1


def test_without_enough_labels_the_first_try_goes_out_when_its_cooldown_would_reach_the_first_drift():
    p = phases()
    latest = 3000 - 5 * 75.0 - FAULT_RETRY_EVENTS  # 2325
    assert p.latest_first_try == latest
    assert p.on_fault_progress(2324, None, 0, added_to_training=0) == []
    assert actions(p.on_fault_progress(2325, None, 0, added_to_training=0)) == [PUBLISH, SAY]
    # without known drifts the stream's end bounds it
    assert phases(drift_points=[]).latest_first_try == 9000 - 375 - FAULT_RETRY_EVENTS


def test_the_noisy_candidate_rejected_at_the_gate_ends_the_fault_injection():
    p = phases()
    p.on_fault_progress(800, None, 0, added_to_training=200)
    out = p.on_fault_progress(950, RunOutcome.REJECTED, 1, added_to_training=300)
    assert actions(out) == [SAY, STOP_FAULTY]
    assert texts(out) == ["the bad candidate (trained on noisy labels) was rejected"]
    assert p.stage is Stage.FAULT_DONE and not p.fault_pending
    # done: no further effect, whatever it is told
    assert p.on_fault_progress(960, RunOutcome.FAILED, 1, added_to_training=300) == []
    assert p.fault_tries == 1


def test_a_faulty_candidate_that_passes_the_gate_stops_the_faulty_trainer_until_the_shadow_rejects_it():
    p = phases()
    p.on_fault_progress(800, None, 0, added_to_training=200)
    assert actions(p.on_fault_progress(900, RunOutcome.REGISTERED, 1, added_to_training=300)) == [STOP_FAULTY]
    assert p.stage is Stage.FAULTY_IN_SHADOW and p.fault_pending
    # asked again while it stops; nothing published
    assert actions(p.on_fault_progress(901, RunOutcome.REGISTERED, 1, added_to_training=300)) == [STOP_FAULTY]
    out = p.on_fault_progress(1400, RunOutcome.REJECTED, 1, added_to_training=600)
    assert actions(out) == [SAY, STOP_FAULTY] and p.stage is Stage.FAULT_DONE
    assert p.fault_tries == 1


def test_a_failed_faulty_run_is_retried_later_at_most_three_times_then_a_problem():
    p = phases()
    p.on_fault_progress(800, None, 0, added_to_training=200)
    for tries in range(1, FAULT_MAX_TRIES):
        position = 1000 * tries
        out = p.on_fault_progress(position, RunOutcome.FAILED, tries, added_to_training=200)
        assert texts(out) == ["the faulty run failed (too little data?); another trigger follows"]
        assert p.stage is Stage.FAULT_RETRY and p.retry_at == position + FAULT_RETRY_EVENTS
        assert p.on_fault_progress(position + FAULT_RETRY_EVENTS - 1, RunOutcome.FAILED, tries, 200) == []
        out = p.on_fault_progress(position + FAULT_RETRY_EVENTS, RunOutcome.FAILED, tries, 200)
        assert actions(out) == [PUBLISH, SAY] and p.stage is Stage.FAULT_INJECTED
        assert p.fault_tries == tries + 1 and p.retry_at is None
        # the retry's run has not started yet: the earlier failure schedules nothing
        assert p.on_fault_progress(position + FAULT_RETRY_EVENTS + 1, RunOutcome.FAILED, tries, 200) == []
    assert p.fault_tries == FAULT_MAX_TRIES and p.stage is Stage.FAULT_INJECTED  # not given up after two failures
    out = p.on_fault_progress(2900, RunOutcome.FAILED, FAULT_MAX_TRIES, added_to_training=200)
    assert actions(out) == [PROBLEM, STOP_FAULTY]
    assert texts(out, PROBLEM) == ["the faulty trainer's runs failed 3 times: no bad candidate to reject"]
    assert p.stage is Stage.FAULT_DONE and p.fault_tries == FAULT_MAX_TRIES


def test_a_failed_run_of_an_automatic_trigger_before_the_fault_injection_also_schedules_a_try():
    p = phases()
    out = p.on_fault_progress(500, RunOutcome.FAILED, 1, added_to_training=100)
    assert texts(out) == ["the faulty run failed (too little data?); another trigger follows"]
    assert p.stage is Stage.FAULT_RETRY and p.retry_at == 800
    assert actions(p.on_fault_progress(800, RunOutcome.FAILED, 1, added_to_training=100)) == [PUBLISH, SAY]
    assert p.fault_tries == 1


# --- trainers, drifts, promotions ------------------------------------------------------------------

def test_the_regular_trainer_starts_once_when_the_faulty_one_has_stopped():
    p = phases()
    assert p.on_trainers(faulty_alive=True) == []
    assert actions(p.on_trainers(faulty_alive=False)) == [START_REGULAR]
    assert p.regular_started
    assert p.on_trainers(faulty_alive=False) == []


def test_each_drift_point_is_announced_once_and_the_first_starts_the_regular_trainer_if_needed():
    p = phases()
    assert p.on_event(2999, 0) == []
    out = p.on_event(3000, 1)
    assert actions(out) == [START_REGULAR, SAY]
    assert texts(out) == ["DRIFT 1 at event 3000: concept B"]
    assert p.drifts_seen == 1 and p.regular_started
    assert p.on_event(3001, 1) == []
    out = p.on_event(6000, 2)
    assert actions(out) == [SAY] and texts(out) == ["DRIFT 2 at event 6000: concept C"]
    assert p.drifts_seen == 2
    assert p.on_event(8999, 2) == []
    # the regular trainer already running (handed over after the fault): the drift only announces
    q = phases()
    q.on_trainers(faulty_alive=False)
    assert actions(q.on_event(3000, 1)) == [SAY]
    # no known drift points: no drift is ever announced
    assert phases(drift_points=[]).on_event(3000, 1) == []


def test_a_promotion_after_each_drift_is_announced_once_with_the_events_since_that_drift():
    p = phases()
    assert texts(p.on_promotions(1500, [])) == []
    assert texts(p.on_promotions(1500, ["v1"])) == ["the policy promoted v1 (event 1500)"]
    p.on_event(3000, 1)
    out = p.on_promotions(3450, ["v1", "v3"])
    assert texts(out) == ["the policy promoted v3 (event 3450, 450 events after drift 1)"]
    p.on_event(6000, 2)
    assert p.on_promotions(6100, ["v1", "v3"]) == []
    assert texts(p.on_promotions(6700, ["v1", "v3", "v5"])) == \
        ["the policy promoted v5 (event 6700, 700 events after drift 2)"]
    assert p.promoted == {"v1", "v3", "v5"}


# --- stopping --------------------------------------------------------------------------------------

def test_the_deadline_stops_streaming_with_a_problem():
    p = phases(timeout_s=300.0, started=1000.0)
    assert p.deadline == 1300.0
    assert p.on_clock(4000, now=1300.0) == []
    out = p.on_clock(4001, now=1300.5)
    assert actions(out) == [PROBLEM, STOP_STREAMING]
    assert texts(out, PROBLEM) == ["streaming stopped at the deadline (300s) at event 4001"]
    assert p.stage is Stage.STOPPED and not p.fault_pending
    assert p.on_fault_progress(4001, None, 0, added_to_training=1000) == []


def test_a_dead_processors_worker_stops_streaming_with_its_exit_code_and_log():
    p = phases()
    out = p.on_worker_exit(1, "/run/processors.log", "Traceback ...")
    assert actions(out) == [PROBLEM, STOP_STREAMING]
    assert texts(out, PROBLEM) == ["processor worker died (exit 1); log /run/processors.log:\nTraceback ..."]
    assert p.stage is Stage.STOPPED


# --- one demo's course, as the runner drives it ----------------------------------------------------

@pytest.mark.parametrize("drift_points", [[3000], [3000, 6000]])
def test_a_whole_run_fault_rejected_then_a_promotion_after_each_drift(drift_points):
    """The runner's order per event: clock, fault progress, trainers, drift; promotions at the progress lines."""
    p = phases(drift_points=drift_points, stream_length=3000 * (len(drift_points) + 1))
    outcome, runs, faulty_alive, promoted, log = None, 0, True, [], []
    for position in range(p.stream_length):
        concept = sum(position >= d for d in drift_points)
        step = p.on_clock(position, now=1000.0 + position / 75.0)
        if p.fault_pending:
            if p.fault_tries and position == 1000:
                outcome, runs = RunOutcome.REJECTED, 1  # the noisy candidate failed the gate
            step += p.on_fault_progress(position, outcome, runs, added_to_training=position // 5)
        if any(e.action is STOP_FAULTY for e in step):
            faulty_alive = False
        step += p.on_trainers(faulty_alive) + p.on_event(position, concept)
        if position in [d + 500 for d in drift_points]:
            promoted.append(f"v{position}")
        if position % 375 == 0:
            step += p.on_promotions(position, promoted)
        log += [(position, e.action, e.text) for e in step]
    assert (800, PUBLISH, "") in log  # 160 labeled examples by event 800
    assert (1000, SAY, "the bad candidate (trained on noisy labels) was rejected") in log
    assert [pos for pos, a, _ in log if a is START_REGULAR] == [1000]
    assert [t for _, a, t in log if t.startswith("DRIFT")] == \
        [f"DRIFT {k} at event {d}: concept {'ABC'[k]}" for k, d in enumerate(drift_points, 1)]
    promotions = [t for _, a, t in log if t.startswith("the policy promoted")]
    assert len(promotions) == len(drift_points)
    assert all(f"after drift {k}" in t for k, t in enumerate(promotions, 1))
    assert not [a for _, a, _ in log if a in (PROBLEM, STOP_STREAMING)]
    assert p.stage is Stage.FAULT_DONE and p.drifts_seen == len(drift_points) and p.fault_tries == 1
