"""Resolve the Kafka and ClickHouse a process talks to: configured ones, or embedded ones."""
from __future__ import annotations

import contextlib
from typing import Iterator

from infra.embedded import EmbeddedBroker
from infra.settings import Settings


@contextlib.contextmanager
def kafka_stack(settings: Settings) -> Iterator[Settings]:
    """Yield settings whose bootstrap_servers answer: the configured cluster, else an embedded
    broker started for the duration of the block."""
    if settings.bootstrap_servers:
        yield settings
        return
    with EmbeddedBroker() as broker:
        yield settings.for_embedded_broker(broker.bootstrap_servers)
