"""Shared fixtures: real Kafka and ClickHouse, never mocks.

Kafka: CTLOOP_TEST_BOOTSTRAP_SERVERS if set, else a testcontainers Kafka when a Docker engine
answers, else the embedded Tansu broker (one per test session). Each test gets its own topic prefix,
so tests never see each other's events.
ClickHouse: CTLOOP_TEST_CLICKHOUSE_URL if set, else a testcontainers ClickHouse when a Docker engine
answers, else embedded chdb under a temporary directory.
"""
from __future__ import annotations

import os
import uuid

import pytest

from infra.embedded import EmbeddedBroker
from infra.settings import Settings


def docker_available() -> bool:
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
def kafka_bootstrap():
    configured = os.environ.get("CTLOOP_TEST_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


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
def settings(kafka_bootstrap, tmp_path) -> Settings:
    """Settings on the test Kafka with a topic prefix of this test's own."""
    return Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
                    default_partitions=4, data_dir=str(tmp_path / "data"))


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
