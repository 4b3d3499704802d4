"""Tests delete the topics they made (tests/helpers/topic_cleanup.py), over the embedded broker."""
from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import NewTopic

from tests.helpers.topic_cleanup import delete_prefix, list_topics, sweep


@pytest.fixture(scope="module")
def seen() -> dict:
    return {}


def _create(admin, names):
    for future in admin.create_topics([NewTopic(n, 1, 1) for n in names]).values():
        future.result(10)


def test_a_test_makes_topics_under_the_runs_prefix(settings, topics, admin, test_run_prefix, seen):
    assert settings.topic_prefix.startswith(test_run_prefix)
    made = {t for t in list_topics(admin) if t.startswith(settings.topic_prefix)}
    assert topics.predictions in made and len(made) >= 10
    seen["prefix"] = settings.topic_prefix


def test_its_topics_are_gone_once_it_ended(admin, seen):
    """Runs after the test above (file order): the settings fixture deleted its topics."""
    assert seen.get("prefix"), "run the whole file: the test above records its prefix"
    assert not [t for t in list_topics(admin) if t.startswith(seen["prefix"])]


def test_sweep_deletes_the_runs_topics_and_those_made_under_own_prefixes(kafka_bootstrap, admin):
    run = f"tz{uuid.uuid4().hex[:5]}-"
    older = f"t{uuid.uuid4().hex[:10]}.older"      # made before the run: not this run's, kept
    _create(admin, [older])
    before = list_topics(admin)
    own = f"t{uuid.uuid4().hex[:10]}.predictions"  # a test's own prefix, made during the run
    demo = "ctloop.demo-20260101-000000-abcd.feedback"
    mine = [f"{run}0123abcd.predictions", f"{run}0123abcd.feedback", f"{run}99.x"]
    _create(admin, mine + [own, demo])
    deleted = sweep(kafka_bootstrap, run, before)
    assert sorted(deleted) == sorted(mine + [own, demo])
    left = list_topics(admin)
    assert not [t for t in left if t.startswith(run)] and own not in left and demo not in left
    assert older in left
    assert delete_prefix(kafka_bootstrap, older) == [older]
    with pytest.raises(ValueError, match="prefix"):
        delete_prefix(kafka_bootstrap, "")
