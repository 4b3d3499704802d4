"""The model registry fold over model-lifecycle and model-updates events (no Kafka needed)."""
from __future__ import annotations

import uuid

from streams import catalog as ev
from streams.consumer import Event
from streams.serde import new_event
from streams.registry import ModelRegistry

DEP = "dep"


def registered(version: str, alias: str = "challenger", run_id: str | None = None, trigger_id: str | None = None, t: int = 0):
    return new_event(ev.MODEL_REGISTERED, deployment=DEP, model_name="m", model_version=version, alias=alias,
                     metrics={"accuracy": 0.9}, artifact_uri=f"file:///a/{version}.pt", artifact_sha256="0" * 64,
                     run_id=run_id, trigger_id=trigger_id, event_time=t or 1000 + int(version[1:]))


def promoted(version: str, previous: str | None = None):
    return new_event(ev.MODEL_PROMOTED, deployment=DEP, model_version=version, previous_version=previous,
                     decided_by="policy", reason="better")


def rolled_back(frm: str, to: str):
    return new_event(ev.MODEL_ROLLED_BACK, deployment=DEP, from_version=frm, to_version=to, decided_by="policy",
                     reason="worse live")


def rejected(version: str, stage: str, run_id: str | None = None):
    return new_event(ev.CANDIDATE_REJECTED, deployment=DEP, model_version=version, stage=stage, reasons=["worse"],
                     run_id=run_id)


def fold(*events) -> ModelRegistry:
    r = ModelRegistry()
    for event_type, value in events:
        r.apply(event_type, value)
    return r


def aliases(r: ModelRegistry) -> dict[str, str]:
    return {m.version: m.alias for m in r.versions(DEP)}


def test_first_model_champion_then_promotion_archives_previous():
    r = fold((ev.MODEL_REGISTERED, registered("v1", "champion")), (ev.MODEL_PROMOTED, promoted("v1")),
             (ev.MODEL_REGISTERED, registered("v2")))
    assert aliases(r) == {"v1": "champion", "v2": "challenger"}
    assert r.previous_champion(DEP) is None
    r.apply(ev.MODEL_PROMOTED, promoted("v2", "v1"))
    assert aliases(r) == {"v1": "archived", "v2": "champion"}
    assert r.champion(DEP).version == "v2" and r.previous_champion(DEP).version == "v1"
    assert r.deployments() == [DEP] and r.get(DEP, "v1").metrics == {"accuracy": 0.9}


def test_rollback_restores_previous_and_marks_the_demoted():
    r = fold((ev.MODEL_REGISTERED, registered("v1", "champion")), (ev.MODEL_REGISTERED, registered("v2")),
             (ev.MODEL_PROMOTED, promoted("v2", "v1")), (ev.MODEL_ROLLED_BACK, rolled_back("v2", "v1")))
    assert aliases(r) == {"v1": "champion", "v2": "rolled_back"}
    assert r.champion(DEP).version == "v1" and r.previous_champion(DEP) is None


def test_rejections_of_both_stages_and_never_of_the_champion():
    r = fold((ev.MODEL_REGISTERED, registered("v1", "champion")), (ev.MODEL_REGISTERED, registered("v2")),
             (ev.CANDIDATE_REJECTED, rejected("v2", "shadow")), (ev.CANDIDATE_REJECTED, rejected("v3", "evaluation")),
             (ev.CANDIDATE_REJECTED, rejected("v1", "shadow")))
    assert aliases(r) == {"v1": "champion", "v2": "rejected", "v3": "rejected"}


def test_trigger_is_done_after_a_decision_or_failure_not_after_finish_alone():
    trig, run = str(uuid.uuid4()), str(uuid.uuid4())
    started = new_event(ev.TRAINING_RUN_STARTED, deployment=DEP, run_id=run, trigger_id=trig, trainer_id="t", device="cpu")
    lineage = {"topic": "le", "partitions": [{"partition": 0, "start_offset": 0, "end_offset": 7}], "row_count": 7,
               "train_rows": 5, "holdout_rows": 2, "content_hash": "h", "base_dataset": None}
    finished = new_event(ev.TRAINING_RUN_FINISHED, deployment=DEP, run_id=run, trigger_id=trig, model_version="v5",
                         metrics={"accuracy": 0.5}, lineage=lineage, code_version="c", environment={}, artifact_uri="u",
                         artifact_sha256="s", duration_ms=1, samples_per_second=1.0)
    r = fold((ev.TRAINING_RUN_STARTED, started), (ev.TRAINING_RUN_FINISHED, finished))
    assert not r.is_trigger_done(trig) and r.runs[run].status == "finished"
    r.apply(ev.CANDIDATE_REJECTED, rejected("v5", "evaluation", run_id=run))
    assert r.is_trigger_done(trig)
    mv = r.get(DEP, "v5")
    assert mv.alias == "rejected" and mv.lineage == lineage and mv.trigger_id == trig and mv.artifact_uri == "u"

    trig2, run2 = str(uuid.uuid4()), str(uuid.uuid4())
    r.apply(ev.TRAINING_RUN_FAILED, new_event(ev.TRAINING_RUN_FAILED, deployment=DEP, run_id=run2, trigger_id=trig2,
                                              reason="few", error_type="too_few_examples"))
    assert r.is_trigger_done(trig2) and r.runs_of_trigger(trig2)[0].status == "failed"
    trig3 = str(uuid.uuid4())
    r.apply(ev.MODEL_REGISTERED, registered("v6", run_id=str(uuid.uuid4()), trigger_id=trig3))
    assert r.is_trigger_done(trig3)


def test_duplicate_events_fold_once_and_updates_merge_in_log_order():
    reg = registered("v1", "champion")
    r = fold((ev.MODEL_REGISTERED, reg), (ev.MODEL_REGISTERED, registered("v2")), (ev.MODEL_PROMOTED, promoted("v2")),
             (ev.MODEL_REGISTERED, reg))       # redelivered: must not make v1 champion again
    assert r.champion(DEP).version == "v2"

    r = ModelRegistry().apply_all([e(ev.MODEL_REGISTERED, registered("v1", "champion"), 1, 0),
                                   e(ev.MODEL_REGISTERED, registered("v2"), 3, 1)],
                                  [e(ev.MODEL_PROMOTED, promoted("v2", "v1"), 5, 0), e(ev.MODEL_PROMOTED, promoted("v9"), 6, 1)])
    assert aliases(r) == {"v1": "archived", "v2": "champion"}   # unknown v9 refused
    assert [(x.version, x.reason) for x in r.refusals] == [("v9", "unknown version v9")]


def e(event_type, value, ts, offset):
    return Event(event_type, value, "t", 0, offset, None, ts)


def test_a_registration_from_a_clock_ten_minutes_ahead_is_promoted():
    """Issue 11: a trainer whose clock runs 10 min ahead registers v2; a correct clock promotes it 5 s
    later. Producer times say the promotion came first; the log (and causality) says otherwise."""
    now = 1_764_000_000_000
    lifecycle = [e(ev.MODEL_REGISTERED, registered("v1", "champion", t=now - 60_000), now - 60_000, 0),
                 e(ev.MODEL_REGISTERED, registered("v2", t=now + 600_000), now + 600_000, 1)]
    updates = [e(ev.MODEL_PROMOTED, promoted("v1"), now - 59_000, 0),
               e(ev.MODEL_PROMOTED, promoted("v2", "v1"), now + 5_000, 1)]
    r = ModelRegistry().apply_all(lifecycle, updates)
    assert r.champion(DEP).version == "v2" and r.refusals == []
    assert [m.version for m in r.versions(DEP)] == ["v1", "v2"]   # log order, whatever the clocks


def test_an_update_read_before_its_registration_is_held_and_keeps_its_order():
    r = ModelRegistry()
    r.offer(ev.MODEL_REGISTERED, registered("v1", "champion"))
    assert not r.offer(ev.MODEL_PROMOTED, promoted("v2", "v1"))            # v2 not read yet: held
    assert not r.offer(ev.MODEL_ROLLED_BACK, rolled_back("v2", "v1"))      # held behind it (order kept)
    assert r.champion(DEP).version == "v1" and len(r.held) == 2
    r.offer(ev.MODEL_REGISTERED, registered("v2"))
    assert r.held == [] and aliases(r) == {"v1": "champion", "v2": "rolled_back"}


def cas_promoted(version, expected, state="challenger", by="policy", forced=False):
    return new_event(ev.MODEL_PROMOTED, deployment=DEP, model_version=version, previous_version=expected,
                     decided_by=by, reason="r", expected_champion=expected, expected_state=state, forced=forced)


def cas_rolled_back(frm, to, state="archived"):
    return new_event(ev.MODEL_ROLLED_BACK, deployment=DEP, from_version=frm, to_version=to, decided_by="policy",
                     reason="worse live", expected_champion=frm, expected_state=state)


def racing_log():
    """Issue 11 (a): the policy promotes v2; an operator promotes v3; then a rollback v2 -> v1 that the
    policy decided on its older view arrives."""
    lifecycle = [(ev.MODEL_REGISTERED, registered(v, "champion" if v == "v1" else "challenger")) for v in ("v1", "v2", "v3")]
    updates = [(ev.MODEL_PROMOTED, cas_promoted("v2", "v1")), (ev.MODEL_PROMOTED, cas_promoted("v3", "v2", by="manual")),
               (ev.MODEL_ROLLED_BACK, cas_rolled_back("v2", "v1"))]
    return lifecycle, updates


def test_a_decision_made_on_an_older_view_is_refused_and_recorded():
    lifecycle, updates = racing_log()
    r = fold(*lifecycle, *updates)
    assert r.champion(DEP).version == "v3"
    assert aliases(r) == {"v1": "archived", "v2": "archived", "v3": "champion"}   # v3 never demoted
    (refusal,) = r.refusals_of(DEP)
    assert refusal.event_type == ev.MODEL_ROLLED_BACK and refusal.version == "v1"
    assert "expected champion v2, but the champion is v3" in refusal.reason
    # every interleaving a reader may see gives the same verdict
    r2 = ModelRegistry()
    for t, v in updates + lifecycle:
        r2.offer(t, v)
    assert r2.champion(DEP).version == "v3" and [x.reason for x in r2.refusals] == [refusal.reason]


def test_preconditions_on_the_version_state_and_released_events_without_them():
    r = fold((ev.MODEL_REGISTERED, registered("v1", "champion")), (ev.MODEL_REGISTERED, registered("v2")),
             (ev.CANDIDATE_REJECTED, rejected("v2", "shadow")))
    r.apply(ev.MODEL_PROMOTED, cas_promoted("v2", "v1", state="challenger"))     # it was rejected since
    assert r.champion(DEP).version == "v1" and "expected v2 to be challenger, but it is rejected" in r.refusals[0].reason
    r.apply(ev.MODEL_PROMOTED, cas_promoted("v2", "v1", state="rejected", by="manual", forced=True))
    assert r.champion(DEP).version == "v2"
    old = fold((ev.MODEL_REGISTERED, registered("v1", "champion")), (ev.MODEL_REGISTERED, registered("v2")),
               (ev.MODEL_PROMOTED, promoted("v2", "v1")), (ev.MODEL_ROLLED_BACK, rolled_back("v3", "v1")))
    assert old.champion(DEP).version == "v1" and old.refusals == []   # released/1 events: no preconditions, as before


def test_held_updates_are_refused_once_lifecycle_was_read_past_the_end_asked_after_them():
    from streams.registry import HeldUpdateRelease

    r = ModelRegistry()
    r.offer(ev.MODEL_REGISTERED, registered("v1", "champion"))
    position, ends = [1], []
    release = HeldUpdateRelease(r, lambda: position[0], lambda: ends.pop(0))
    r.offer(ev.MODEL_PROMOTED, promoted("v9", "v1"))          # nobody ever registers v9
    r.offer(ev.MODEL_PROMOTED, promoted("v2", "v1"))          # held behind it
    ends.append(2)                                            # lifecycle end asked after both were read
    release.check()
    assert len(r.held) == 2                                   # v2's registration (offset 1) not read yet
    r.offer(ev.MODEL_REGISTERED, registered("v2"))            # offset 1 read: v9 still unknown
    position[0] = 2
    release.check()
    assert r.held == [] and r.champion(DEP).version == "v2"
    assert [x.reason for x in r.refusals] == ["unknown version v9"]
