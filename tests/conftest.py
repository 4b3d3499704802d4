"""Shared fixtures: real Kafka and ClickHouse, never mocks.

Kafka: CTLOOP_TEST_BOOTSTRAP_SERVERS if set, else a testcontainers Kafka when a Docker engine
answers, else the embedded Tansu broker (one per test session). Each test gets its own topic prefix,
so tests never see each other's events; every prefix starts with the run's own (``test_run_prefix``),
and the topics are deleted after the test and, what is left, at the end of the session
(tests/helpers/topic_cleanup.py).
ClickHouse: CTLOOP_TEST_CLICKHOUSE_URL if set, else a testcontainers ClickHouse when a Docker engine
answers, else embedded chdb under a temporary directory.
"""
from __future__ import annotations

import contextlib
import functools
import os
import uuid

import pytest

from infra.embedded import EmbeddedBroker
from infra.settings import Settings


@functools.cache
def docker_available() -> bool:
    """Whether a Docker engine answers (asked once per session: both session fixtures ask, and without an
    engine each probe waits for the client's connection error)."""
    if os.environ.get("CTLOOP_TEST_NO_DOCKER"):
        return False
    try:
        import docker  # installed with testcontainers

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:  # noqa: BLE001 - no engine
        return False


@pytest.fixture(scope="session")
def test_run_prefix() -> str:
    """The start of every topic prefix this test run hands out (``t<6 hex>-``)."""
    return f"t{uuid.uuid4().hex[:6]}-"


@contextlib.contextmanager
def _swept(bootstrap: str, run_prefix: str):
    """Yield ``bootstrap``; at the end delete this run's topics and fail on any left (topic_cleanup)."""
    from tests.helpers.topic_cleanup import list_topics, sweep

    from confluent_kafka.admin import AdminClient

    before = list_topics(AdminClient({"bootstrap.servers": bootstrap}))
    yield bootstrap
    sweep(bootstrap, run_prefix, before)


@pytest.fixture(scope="session")
def kafka_bootstrap(test_run_prefix):
    configured = os.environ.get("CTLOOP_TEST_BOOTSTRAP_SERVERS")
    if configured:
        with _swept(configured, test_run_prefix) as bootstrap:
            yield bootstrap
        return
    if docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka, _swept(kafka.get_bootstrap_server(), test_run_prefix) as bootstrap:
            yield bootstrap
        return
    with EmbeddedBroker() as broker, _swept(broker.bootstrap_servers, test_run_prefix) as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def clickhouse_url(tmp_path_factory):
    configured = os.environ.get("CTLOOP_TEST_CLICKHOUSE_URL")
    if configured:
        yield configured
        return
    if docker_available():
        from testcontainers.clickhouse import ClickHouseContainer

        with ClickHouseContainer() as ch:
            host, port = ch.get_container_host_ip(), ch.get_exposed_port(8123)
            yield f"http://{ch.username}:{ch.password}@{host}:{port}/default"
        return
    yield f"chdb:///{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture
def settings(kafka_bootstrap, test_run_prefix, tmp_path) -> Settings:
    """Settings on the test Kafka with a topic prefix of this test's own (under the run's prefix); the
    topics with that prefix are deleted when the test ends."""
    from tests.helpers.topic_cleanup import delete_prefix

    prefix = f"{test_run_prefix}{uuid.uuid4().hex[:8]}."
    yield Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix, default_partitions=4,
                   data_dir=str(tmp_path / "data"))
    try:
        delete_prefix(kafka_bootstrap, prefix)
    except Exception:  # noqa: BLE001 - a broker a test stopped: the session's sweep deletes them
        pass


@pytest.fixture
def admin(kafka_bootstrap):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def topics(settings, admin):
    """The topic registry of this test, with every topic created."""
    from streams.topics import Topics, ensure_topics

    registry = Topics.from_settings(settings)
    ensure_topics(admin, registry)
    return registry
