"""The one Kafka client configuration of ctloop, built from :class:`infra.settings.Settings`.

Every Kafka client ctloop makes goes through this module, so that bootstrap servers, TLS and SASL are
set in one place (the ``CTLOOP_*`` settings) and no client bypasses them:

* confluent-kafka / librdkafka (every Producer, Consumer and AdminClient): :func:`client_config`, and on
  top of it :func:`consumer_config` (group consumers) and :func:`producer_config` (producers);
* faust / aiokafka (the processors' worker): :func:`faust_broker_options` (``broker``,
  ``broker_client_id`` and ``broker_credentials``, with an :class:`ssl.SSLContext` for TLS).

``tests/test_kafka_config.py`` fails when a ``"bootstrap.servers"`` literal appears anywhere else.
Secrets (``sasl_password``, ``ssl_key_password``) go into the returned dicts/credentials only; nothing
here logs them.
"""
from __future__ import annotations

import ssl
from typing import Any, Mapping

# the protocol names and predicates are the settings' (the leaf infra.settings validates them); re-exported here
from infra.settings import SASL_MECHANISMS, SECURITY_PROTOCOLS, Settings, uses_sasl, uses_tls  # noqa: F401


def client_config(settings: "Settings", *extra: Mapping[str, Any], **overrides: Any) -> dict:
    """The librdkafka configuration of a client of the configured cluster.

    Returns a new dict: ``bootstrap.servers``, ``client.id`` (when set), ``security.protocol``, and with
    a SASL protocol ``sasl.mechanism`` / ``sasl.username`` / ``sasl.password``, with a TLS protocol the
    ``ssl.*.location`` files and ``ssl.key.password`` that are set; then each mapping of ``extra`` and
    ``overrides`` on top, in that order (e.g. ``client_config(s, {"group.id": "g"}, log_level=0)``).
    The settings were validated when they were built (:class:`infra.settings.Settings` raises
    ValueError naming the field), so this raises nothing itself.
    """
    protocol = settings.security_protocol
    config: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers, "security.protocol": protocol}
    if settings.client_id:
        config["client.id"] = settings.client_id
    if uses_sasl(protocol):
        config["sasl.mechanism"] = settings.sasl_mechanism
        config["sasl.username"] = settings.sasl_username
        config["sasl.password"] = settings.sasl_password
    if uses_tls(protocol):
        for key, value in (("ssl.ca.location", settings.ssl_ca_location),
                           ("ssl.certificate.location", settings.ssl_certificate_location),
                           ("ssl.key.location", settings.ssl_key_location),
                           ("ssl.key.password", settings.ssl_key_password)):
            if value:
                config[key] = value
    for mapping in extra:
        config.update(mapping)
    config.update(overrides)
    return config


def consumer_config(settings: "Settings", group_id: str, **extra: Any) -> dict:
    """The librdkafka configuration of a group consumer (was ``Settings.consumer_config``): quick group
    joins (``session_timeout_ms``, ``heartbeat_interval_ms``), manual commits, ``auto.offset.reset``
    earliest, per-partition fetches of ``settings.fetch_max_partition_bytes`` (and ``fetch.max.bytes`` /
    ``receive.message.max.bytes`` raised above librdkafka's 50 MiB default when needed), on top of
    :func:`client_config`; ``extra`` last. Returns a new dict; raises nothing."""
    config = client_config(settings, {
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": settings.heartbeat_interval_ms,
        "topic.metadata.refresh.interval.ms": 2000,
        "log.connection.close": False,
        "max.partition.fetch.bytes": settings.fetch_max_partition_bytes,
    })
    if settings.fetch_max_partition_bytes > 50 * 1024 * 1024:  # above librdkafka's fetch.max.bytes default
        config["fetch.max.bytes"] = settings.fetch_max_partition_bytes
        config["receive.message.max.bytes"] = max(100_000_000, settings.fetch_max_partition_bytes + 512)
    config.update(extra)
    return config


def producer_config(settings: "Settings", **extra: Any) -> dict:
    """The librdkafka configuration of a producer (was ``Settings.producer_config``): acks=all,
    ``producer_linger_ms``, ``producer_queue_max_messages``, ``producer_partitioner``, the record-size
    limit (``max_message_bytes``) and ``producer_delivery_timeout_ms``, on top of :func:`client_config`;
    ``extra`` last. Returns a new dict; raises nothing."""
    config = client_config(settings, {
        "linger.ms": settings.producer_linger_ms,
        "queue.buffering.max.messages": settings.producer_queue_max_messages,
        "enable.idempotence": False,
        "acks": "all",
        "partitioner": settings.producer_partitioner,
        "log.connection.close": False,
        "message.max.bytes": settings.max_message_bytes,
        "message.timeout.ms": settings.producer_delivery_timeout_ms,
    })
    config.update(extra)
    return config


def ssl_context(settings: "Settings") -> ssl.SSLContext:
    """The client-side TLS context of aiokafka (faust) for the configured cluster.

    Verifies the brokers' certificates and host names against ``ssl_ca_location`` (empty: Python's
    default trust store); with ``ssl_certificate_location`` it presents that certificate and key (mTLS),
    the key decrypted with ``ssl_key_password`` when set. Raises ssl.SSLError / OSError when a file does
    not hold what it should (the settings only checked that the files exist).
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ssl_ca_location or None)
    if settings.ssl_certificate_location:
        context.load_cert_chain(settings.ssl_certificate_location, settings.ssl_key_location or None,
                                password=settings.ssl_key_password or None)
    return context


def faust_credentials(settings: "Settings"):
    """faust's ``broker_credentials`` for the configured protocol: None (PLAINTEXT),
    ``faust.SSLCredentials`` (SSL) or ``faust.SASLCredentials`` (SASL_PLAINTEXT, SASL_SSL; the latter with
    the :func:`ssl_context`). faust hands them to aiokafka as ``security_protocol``, ``sasl_mechanism``,
    ``sasl_plain_username``/``_password`` and ``ssl_context``."""
    import faust

    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings) if uses_tls(protocol) else None
    if uses_sasl(protocol):
        return faust.SASLCredentials(username=settings.sasl_username, password=settings.sasl_password,
                                     mechanism=settings.sasl_mechanism, ssl_context=context)
    return faust.SSLCredentials(context)


def faust_broker_options(settings: "Settings") -> dict:
    """Keyword arguments of ``faust.App`` that point it at the configured cluster: ``broker`` (one
    ``kafka://host:port`` URL per bootstrap server), ``broker_client_id`` when ``client_id`` is set and
    ``broker_credentials`` (:func:`faust_credentials`) unless PLAINTEXT."""
    options: dict[str, Any] = {
        "broker": [f"kafka://{hp.strip()}" for hp in settings.bootstrap_servers.split(",") if hp.strip()],
    }
    if settings.client_id:
        options["broker_client_id"] = settings.client_id
    credentials = faust_credentials(settings)
    if credentials is not None:
        options["broker_credentials"] = credentials
    return options
