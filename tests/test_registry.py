"""The model registry fold over model-lifecycle and model-updates events (no Kafka needed)."""
from __future__ import annotations

import uuid

from streams import catalog as ev
from streams.consumer import Event
from streams.serde import new_event
from trainers.registry import ModelRegistry

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


def test_duplicate_events_fold_once_and_updates_merge_in_time_order():
    reg = registered("v1", "champion")
    r = fold((ev.MODEL_REGISTERED, reg), (ev.MODEL_REGISTERED, registered("v2")), (ev.MODEL_PROMOTED, promoted("v2")),
             (ev.MODEL_REGISTERED, reg))       # redelivered: must not make v1 champion again
    assert r.champion(DEP).version == "v2"

    def e(event_type, value, ts):
        return Event(event_type, value, "t", 0, 0, None, ts)

    r = ModelRegistry().apply_all([e(ev.MODEL_REGISTERED, registered("v1", "champion"), 1),
                                   e(ev.MODEL_REGISTERED, registered("v2"), 3)],
                                  [e(ev.MODEL_PROMOTED, promoted("v2", "v1"), 5), e(ev.MODEL_PROMOTED, promoted("v9"), 6)])
    assert aliases(r) == {"v1": "archived", "v2": "champion"}   # unknown v9 ignored
