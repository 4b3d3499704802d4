"""The topic registry and idempotent topic creation on a real broker."""
from __future__ import annotations

import pytest
from confluent_kafka.admin import ConfigResource

from streams import catalog as ev
from streams.topics import SPECS, Topics, ensure_topics


def test_names_and_resolution():
    t = Topics("acme.", default_partitions=6)
    assert t.predictions == "acme.predictions" and t.shadow_predictions == "acme.shadow-predictions"
    assert t.model_lifecycle == "acme.model-lifecycle" and t.dead_letters == "acme.dead-letters"
    assert t.resolve("feedback") == "acme.feedback" == t.resolve("acme.feedback")
    assert t.spec_of("acme.deployments").key == "deployments" and t.spec_of("other.deployments") is None
    assert t.partitions("predictions") == 6 and t.partitions("model-updates") == 1
    with pytest.raises(KeyError, match="unknown topic 'nope'"):
        t.name("nope")
    with pytest.raises(AttributeError):
        t.no_such_topic  # noqa: B018
    assert len(t.all_names()) == len(SPECS) == len(set(t.all_names()))


def test_registry_contract():
    t = Topics()
    by_key = t.specs
    # co-partitioned join inputs: keyed by prediction id, same partition count
    for key in ("predictions", "shadow-predictions", "feedback", "labeled-examples"):
        assert by_key[key].record_key == "prediction_id" and by_key[key].partitioned
    # totally ordered decision logs
    for key in ("deployments", "model-lifecycle", "model-updates"):
        assert not by_key[key].partitioned and t.partitions(key) == 1
    assert by_key["deployments"].config["cleanup.policy"] == "compact"
    assert ev.MODEL_PROMOTED in by_key["model-updates"].event_types
    every_type = {e for s in SPECS for e in s.event_types}
    assert every_type == set(ev.default_catalog().names())  # every event has a home
    assert all(s.description for s in SPECS)


def _configs(admin, name: str) -> dict:
    (future,) = admin.describe_configs([ConfigResource("topic", name)]).values()
    return {k: v.value for k, v in future.result(10).items()}


def test_ensure_topics_is_idempotent_and_applies_the_registry(settings, admin):
    registry = Topics.from_settings(settings)
    first = ensure_topics(admin, registry)
    assert set(first.values()) == {"created"} and set(first) == set(registry.all_names())
    second = ensure_topics(admin, registry)
    assert set(second.values()) == {"exists"}
    md = admin.list_topics(timeout=10)
    for key, spec in registry.specs.items():
        name = registry.name(key)
        assert len(md.topics[name].partitions) == registry.partitions(key), name
        configs = _configs(admin, name)
        for k, v in spec.config.items():
            assert configs.get(k) == v, f"{name}: {k}={configs.get(k)!r}, registry says {v!r}"


def test_ensure_topics_subset_and_concurrent_creator(settings, admin):
    registry = Topics.from_settings(settings)
    assert ensure_topics(admin, registry, ["drift"]) == {registry.drift: "created"}
    # another process created one meanwhile: still fine
    result = ensure_topics(admin, registry, ["drift", "triggers"])
    assert result == {registry.drift: "exists", registry.triggers: "created"}
