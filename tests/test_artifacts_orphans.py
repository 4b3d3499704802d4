"""Orphaned artifacts: files of the store that no ModelRegistered / TrainingRunFinished /
CandidateRejected names are listed and deleted; named and recent ones never. The events go over the
test Kafka (embedded broker by default)."""
from __future__ import annotations

import json
import os
import time

import pytest
import torch
from click.testing import CliRunner

from streams import catalog as ev
from streams.producer import EventProducer
from streams.serde import new_event
from trainers.artifacts import (ArtifactStore, RegistryUnavailableError, classify, delete_orphans, find_orphans,
                                named_paths)

HOUR = 3600.0


def _age(path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def _weights() -> dict:
    return {"w": torch.zeros(2, 2)}


def _lifecycle(settings, topics, events) -> None:
    with EventProducer(settings) as producer:
        for event_type, fields in events:
            topic = topics.model_updates if fields.get("stage") == "shadow" else topics.model_lifecycle
            producer.produce(topic, event_type, new_event(event_type, **fields), key=fields["deployment"])
        producer.flush()


def _registered(dep, version, uri, sha) -> tuple[str, dict]:
    return ev.MODEL_REGISTERED, dict(
        deployment=dep, model_name=dep, model_version=version, run_id="r1", trigger_id="t1", alias="champion",
        metrics={}, champion_version=None, champion_metrics={}, lineage=None, artifact_uri=uri, artifact_sha256=sha,
        model_factory="mlp", model_config={})


def _rejected(dep, version) -> tuple[str, dict]:
    return ev.CANDIDATE_REJECTED, dict(deployment=dep, model_version=version, run_id="r2", stage="evaluation",
                                       reasons=["worse"], metrics={}, champion_version=None, champion_metrics={})


@pytest.fixture
def store(settings):
    return ArtifactStore.from_settings(settings)


def test_only_the_orphan_is_listed_and_deleted(settings, topics, store):
    reg_uri, reg_sha = store.save("fraud", "v1-aaaaaaaa", _weights())
    store.save("fraud", "v2-bbbbbbbb", _weights())           # rejected by the gate: named by CandidateRejected
    orphan_uri, _ = store.save("fraud", "v3-cccccccc", _weights())  # killed before publishing anything
    young_uri, _ = store.save("fraud", "v4-dddddddd", _weights())   # a run still in progress
    torn = store.root / "fraud" / ".v5-eeeeeeee.pt.x1y2.tmp"        # killed mid-write
    torn.write_bytes(b"partial")
    for f in (store.root / "fraud").iterdir():
        _age(f, 2 * HOUR)
    _age(store.root / "fraud" / "v4-dddddddd.pt", 60)
    _lifecycle(settings, topics, [_registered("fraud", "v1-aaaaaaaa", reg_uri, reg_sha),
                                  _rejected("fraud", "v2-bbbbbbbb")])

    found = {a.path.name: a.status for a in find_orphans(settings, min_age_s=HOUR)}

    assert found == {"v1-aaaaaaaa.pt": "named", "v2-bbbbbbbb.pt": "named", "v3-cccccccc.pt": "orphan",
                     "v4-dddddddd.pt": "recent", ".v5-eeeeeeee.pt.x1y2.tmp": "orphan"}
    deleted = delete_orphans(find_orphans(settings, min_age_s=HOUR))
    assert sorted(p.name for p in deleted) == [".v5-eeeeeeee.pt.x1y2.tmp", "v3-cccccccc.pt"]
    assert sorted(p.name for p in (store.root / "fraud").iterdir()) == ["v1-aaaaaaaa.pt", "v2-bbbbbbbb.pt",
                                                                        "v4-dddddddd.pt"]
    assert store.load_state_dict(reg_uri, reg_sha)["w"].shape == (2, 2)   # the registered one still loads


def test_cli_lists_then_deletes_with_the_trigger_timeout_as_default_age(settings, topics, store, monkeypatch):
    from infra.cli import cli

    reg_uri, reg_sha = store.save("churn", "v1-11111111", _weights())
    store.save("churn", "v2-22222222", _weights())
    for f in (store.root / "churn").iterdir():
        _age(f, 2 * HOUR)
    _lifecycle(settings, topics, [_registered("churn", "v1-11111111", reg_uri, reg_sha)])
    for k, v in {"CTLOOP_BOOTSTRAP_SERVERS": settings.bootstrap_servers, "CTLOOP_TOPIC_PREFIX": settings.topic_prefix,
                 "CTLOOP_DATA_DIR": settings.data_dir, "CTLOOP_TRIGGER_TIMEOUT_S": str(HOUR)}.items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()

    listed = runner.invoke(cli, ["artifacts", "orphans", "--json"], catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    rows = {r["path"].rsplit("/", 1)[1]: (r["status"], r["deleted"]) for r in json.loads(listed.output)}
    assert rows == {"v1-11111111.pt": ("named", False), "v2-22222222.pt": ("orphan", False)}
    assert (store.root / "churn" / "v2-22222222.pt").exists()

    monkeypatch.setenv("CTLOOP_TRIGGER_TIMEOUT_S", str(3 * HOUR))   # both younger than the trigger timeout
    assert "0 orphaned artifact(s)" in runner.invoke(cli, ["artifacts", "orphans", "--delete"]).output
    assert (store.root / "churn" / "v2-22222222.pt").exists()

    monkeypatch.setenv("CTLOOP_TRIGGER_TIMEOUT_S", str(HOUR))
    removed = runner.invoke(cli, ["artifacts", "orphans", "--delete"], catch_exceptions=False)
    assert "1 orphaned artifact(s) deleted" in removed.output
    assert sorted(p.name for p in (store.root / "churn").iterdir()) == ["v1-11111111.pt"]


def test_an_empty_lifecycle_topic_refuses_instead_of_calling_everything_orphaned(settings, topics, store):
    store.save("fraud", "v1-aaaaaaaa", _weights())
    _age(store.root / "fraud" / "v1-aaaaaaaa.pt", 2 * HOUR)
    with pytest.raises(RegistryUnavailableError, match="model-lifecycle"):
        find_orphans(settings, min_age_s=HOUR)
    assert (store.root / "fraud" / "v1-aaaaaaaa.pt").exists()


def test_names_cover_the_uri_and_the_store_path_of_the_version(tmp_path):
    elsewhere = tmp_path / "old-root" / "fraud" / "v1.pt"
    names = named_paths(tmp_path / "store", [
        (ev.TRAINING_RUN_FINISHED, {"deployment": "fraud", "model_version": "v1", "artifact_uri": elsewhere.as_uri()}),
        (ev.TRAINING_RUN_FAILED, {"deployment": "fraud", "model_version": "v9"}),   # names nothing
    ])
    assert names == {elsewhere.resolve(), (tmp_path / "store" / "fraud" / "v1.pt").resolve()}
    (tmp_path / "store" / "fraud").mkdir(parents=True)
    (tmp_path / "store" / "fraud" / "notes.txt").write_text("not an artifact")
    assert classify(tmp_path / "store", names, min_age_s=0) == []
