"""The one settings object of ctloop.

Every process builds a :class:`Settings` once (``Settings.from_env()``) and passes it down; no module
reads the environment on its own. Each field maps to an environment variable ``CTLOOP_<FIELD>``
(upper case); ``docs/CONFIGURATION.md`` lists them.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
"""Values of ``CTLOOP_SECURITY_PROTOCOL`` (Kafka's names, the same in librdkafka and aiokafka)."""
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
"""Values of ``CTLOOP_SASL_MECHANISM``."""


def uses_tls(protocol: str) -> bool:
    """Whether ``protocol`` (a :data:`SECURITY_PROTOCOLS` value) encrypts the connection with TLS."""
    return protocol in ("SSL", "SASL_SSL")


def uses_sasl(protocol: str) -> bool:
    """Whether ``protocol`` (a :data:`SECURITY_PROTOCOLS` value) authenticates with SASL."""
    return protocol in ("SASL_PLAINTEXT", "SASL_SSL")


@dataclass(frozen=True)
class Settings:
    """Every setting of ctloop, one field each (environment variable ``CTLOOP_<FIELD>``); frozen.
    Raises ValueError when the Kafka security settings do not fit together."""
    # --- Kafka ---------------------------------------------------------------------------------
    bootstrap_servers: str = ""
    """Kafka bootstrap servers. Empty: start the embedded Tansu broker on a free loopback port."""
    topic_prefix: str = "ctloop."
    """Prefix of every topic name, so several loops can share a cluster."""
    default_partitions: int = 4
    """Partitions of the partitioned topics (predictions, feedback, labeled examples...)."""
    replication_factor: int = 1
    """Replication factor of created topics (3 on a production cluster)."""
    schema_registry_url: str = ""
    """Confluent Schema Registry URL. Set: events are framed with the registry's schema ids.
    Empty: Avro single-object encoding (no registry needed). Decoders accept both."""
    session_timeout_ms: int = 6000
    """Consumer group session timeout; small so that groups (re)join quickly."""
    heartbeat_interval_ms: int = 500
    """Consumer group heartbeat interval."""
    max_message_bytes: int = 1_000_000
    """Largest record (key + value + headers, bytes) any ctloop producer sends: librdkafka's message.max.bytes,
    faust's producer_max_request_size; consumers fetch at least this much per partition. An input record
    over it, or one whose own outputs, dead letter or table row would be over it, is dead-lettered once
    (record_too_large, value truncated, original size and sha256 kept). The brokers must accept it: set the
    broker's message.max.bytes / each topic's max.message.bytes to at least this (Kafka's default is 1048588)."""
    security_protocol: str = "PLAINTEXT"
    """How every Kafka client (librdkafka's and faust's aiokafka) talks to the brokers: PLAINTEXT, SSL (TLS;
    mTLS with ssl_certificate_location), SASL_PLAINTEXT or SASL_SSL (SASL over TLS, what managed Kafka services
    ask for). Anything but PLAINTEXT needs bootstrap_servers (the embedded broker is plaintext)."""
    sasl_mechanism: str = "PLAIN"
    """SASL mechanism of SASL_PLAINTEXT / SASL_SSL: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."""
    sasl_username: str = ""
    """SASL user name; required with SASL_PLAINTEXT / SASL_SSL, refused with the other protocols."""
    sasl_password: str = field(default="", metadata={"secret": True})
    """SASL password; required with SASL_PLAINTEXT / SASL_SSL. A secret: `ctloop settings`, repr and logs
    show *** instead."""
    ssl_ca_location: str = ""
    """PEM file of the CA certificate(s) that signed the brokers' certificates (SSL / SASL_SSL; must exist).
    Empty: the system's trust store."""
    ssl_certificate_location: str = ""
    """PEM file of this client's certificate, for brokers that authenticate clients by TLS (mTLS; SSL /
    SASL_SSL; must exist; needs ssl_key_location)."""
    ssl_key_location: str = ""
    """PEM file of the private key of ssl_certificate_location (must exist)."""
    ssl_key_password: str = field(default="", metadata={"secret": True})
    """Password of an encrypted ssl_key_location. A secret: `ctloop settings`, repr and logs show *** instead."""
    client_id: str = "ctloop"
    """Client id every Kafka client sends (librdkafka client.id, faust broker_client_id): what broker logs,
    quotas and ACL audits see. Empty: each library's default."""
    # --- producer SDK ------------------------------------------------------------------------------
    producer_linger_ms: int = 5
    """How long the SDK producer waits to batch events."""
    producer_queue_max_messages: int = 100_000
    """Events buffered in the SDK before log calls block (back-pressure)."""
    producer_block_timeout_s: float = 30.0
    """How long a log call blocks on a full buffer before raising."""
    producer_delivery_timeout_ms: int = 300_000
    """How long a producer keeps retrying an event (librdkafka message.timeout.ms) before it reports it lost in
    DeliveryError.lost; until then an unacknowledged event is in flight (DeliveryError.in_flight), not lost."""
    producer_partitioner: str = "consistent_random"
    """librdkafka partitioner of keyed events. consistent_random: CRC32 of the key (librdkafka's default);
    murmur2_random: Kafka's Java default, needed when Java/aiokafka/franz-go producers write the
    co-partitioned topics (predictions, feedback) too."""
    sdk_speedups: bool = True
    """Use the SDK's C encoder (streams/_speedups.c) for log_prediction when it was built. False: the
    pure-Python encoders (the same bytes, about half the throughput)."""
    event_time_max_past_s: float = 86400.0
    """How far (seconds) a client's event_time may lie before the reference clock: the SDK's own clock at
    the call, a consumer's record Kafka timestamp (predictions, feedback). Beyond it: the SDK raises
    InvalidEvent naming event_time, consumers dead-letter the record as invalid. 0: no bound (backfills)."""
    event_time_max_future_s: float = 300.0
    """How far (seconds) a client's event_time may lie after the reference clock (see
    event_time_max_past_s). 0: no bound."""
    # --- ClickHouse / storage -----------------------------------------------------------------------
    data_dir: str = ".ctloop"
    """Where embedded data lives (chdb database, model artifacts, reports)."""
    clickhouse_url: str = ""
    """clickhouse-connect URL (http://user:pass@host:8123/db). Empty: chdb:// under data_dir."""
    clickhouse_database: str = "ctloop"
    """ClickHouse database holding the sink tables and views (created if missing)."""
    sink_batch_size: int = 5000
    """Events the ClickHouse sink buffers before one batched insert."""
    sink_flush_interval_s: float = 1.0
    """Longest time the ClickHouse sink holds buffered events before inserting them."""
    sink_insert_retries: int = 5
    """Attempts of one batched insert before the sink gives up (offsets stay uncommitted)."""
    artifact_store: str = ""
    """Model artifact store (a local directory). Empty: <data_dir>/artifacts."""
    # --- processes ---------------------------------------------------------------------------------
    metrics_port: int = 0
    """Port of the Prometheus endpoint of a process (0: a free port is chosen and logged). Never inherited by a
    child process: the demo's processors worker serves on metrics_port + 1 (infra/child_env.py), a supervisor's
    workers on metrics_port + i."""
    processor_workers: int = 1
    """Stream-processor worker processes `ctloop process` (and `python -m processors.worker`) runs and supervises,
    in one consumer group; more than 1: each child gets CTLOOP_PROCESSOR_WORKERS=1, metrics on metrics_port + i (0: a free
    port each) and its own ready file; a child that exits non-zero stops the others and the supervisor exits with its code."""
    processor_stages: str = ""
    """Comma-separated processor stage modules to run (empty: all of processors.app.STAGES)."""
    processor_ready_file: str = ""
    """File a processor worker writes once its consumers are assigned and its state is recovered (empty: none)."""
    processor_stall_timeout_s: float = 60.0
    """A processor worker that cannot reach the broker for this long exits with code 75 for its supervisor to restart
    it; one that finds its topics gone or recreated (new topic ids: a broker that restarted empty) exits with 75 at
    once; so does one whose table recovery receives no changelog record for 5 s + this long. /healthz on the metrics
    port answers 503 meanwhile. 0: never exit (health still reported)."""
    join_ttl_s: float = 7 * 24 * 3600.0
    """How long a prediction waits for its feedback in the join before it is forgotten."""
    feedback_park_ttl_s: float = 3600.0
    """How long feedback that arrived before its prediction is parked before it is dead-lettered (unmatched_feedback)."""
    join_sweep_interval_s: float = 5.0
    """How often the join expires pending predictions and parked feedback past their TTL."""
    stats_min_interval_s: float = 0.5
    """Least time between two FeedbackLoopStats events of one deployment (rate limit; changes are coalesced)."""
    drift_window_size: int = 500
    """Predictions per drift window (per deployment); the first window is the reference."""
    drift_psi_threshold: float = 0.2
    """A feature drifts on a window when its PSI against the reference reaches this."""
    drift_ks_pvalue: float = 0.001
    """...or when the Kolmogorov-Smirnov p-value falls below this."""
    performance_window: int = 200
    """Labeled examples in the rolling live-performance window of a deployment."""
    processor_fetch_wait_ms: int = 20
    """Longest a processor worker's fetch waits for records (faust's fixed 1500 ms adds that much latency per hop)."""
    trigger_timeout_s: float = 1800.0
    """A trigger with no TrainingRunFinished/Failed after this long no longer blocks new triggers."""
    trainer_device: str = "auto"
    """auto (cuda when available), cpu, or cuda:N."""
    trainer_threads: int = 0
    """CPU threads a trainer gives torch (0: all cores, at most 8)."""
    trainer_max_epochs: int = 40
    """Upper bound of training epochs (early stopping usually ends sooner)."""
    trainer_run_delay_s: float = 0.0
    """Seconds a trainer waits after TrainingRunStarted (fault injection for crash tests and demos)."""
    trainer_regression_dir: str = ""
    """Directory of curated regression sets, <deployment>.csv or .parquet (features + label); empty: none."""
    gate_min_metrics: str = ""
    """Minimum candidate metrics on the holdout, e.g. "accuracy=0.7,macro_f1=0.6" (empty: none)."""
    gate_holdout_tolerance: float = 0.01
    """How much worse than the champion a candidate may be on the recent holdout and regression set."""
    gate_segment_tolerance: float = 0.05
    """How much worse than the champion a candidate may be on any class (F1 per class, recent holdout)."""
    gate_forgetting_tolerance: float = 0.05
    """How much worse than the champion a candidate may be on historical examples (forgetting)."""
    # --- serving, shadow comparison, promotion (serving) ---------------------------------------------
    serving_shadow_queue_size: int = 1000
    """Shadow inferences queued per Deployment; when full, shadow work is dropped and counted (never blocks)."""
    shadow_comparison_every: int = 50
    """Emit a ShadowComparison after this many new labeled pairs of a (primary, shadow) version pair."""
    shadow_comparison_interval_s: float = 5.0
    """...or after this many seconds when the pair's counts changed (rate limit for slow traffic)."""
    promotion_max_samples_factor: float = 3.0
    """A shadow not significantly better after this many times promotion_min_samples labeled pairs is rejected."""
    rollback_window: int = 200
    """Labeled predictions of a newly promoted champion judged per window against the previous champion."""
    rollback_watch_windows: int = 5
    """Windows a newly promoted champion is watched for before it is considered confirmed."""
    log_level: str = "INFO"
    """Log level of ctloop processes."""

    def __post_init__(self) -> None:
        _validate_kafka_security(self)

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={_shown(self, f)!r}" for f in fields(self) if f.repr)
        return f"{type(self).__name__}({shown})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Build settings from ``CTLOOP_*`` variables, then apply ``overrides``."""
        env = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            name = f"CTLOOP_{f.name.upper()}"
            if name in env:
                values[f.name] = _parse(f, env[name], name)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes) -> "Settings":
        """A copy with ``changes`` applied (validated again). Raises TypeError for an unknown field and
        ValueError as the constructor does."""
        return dataclasses.replace(self, **changes)

    def for_embedded_broker(self, bootstrap_servers: str) -> "Settings":
        """These settings pointed at an embedded (plaintext, loopback) broker: ``bootstrap_servers`` set,
        security_protocol PLAINTEXT and no SASL/TLS fields."""
        return self.replace(bootstrap_servers=bootstrap_servers, security_protocol="PLAINTEXT", sasl_username="",
                            sasl_password="", ssl_ca_location="", ssl_certificate_location="", ssl_key_location="",
                            ssl_key_password="")

    @property
    def secret_fields(self) -> tuple[str, ...]:
        """Names of the fields holding secrets (never printed: `ctloop settings`, repr and logs show ***)."""
        return SECRET_FIELDS

    @property
    def data_path(self) -> Path:
        """``data_dir`` as a Path."""
        return Path(self.data_dir)

    @property
    def resolved_clickhouse_url(self) -> str:
        """``clickhouse_url``, or the embedded chdb under ``<data_dir>/chdb`` when it is empty."""
        return self.clickhouse_url or f"chdb:///{self.data_path.resolve() / 'chdb'}"

    @property
    def resolved_artifact_store(self) -> str:
        """``artifact_store``, or ``<data_dir>/artifacts`` when it is empty."""
        return self.artifact_store or str(self.data_path / "artifacts")

    @property
    def fetch_max_partition_bytes(self) -> int:
        """Bytes a consumer fetches per partition and request (librdkafka max.partition.fetch.bytes, faust's
        consumer_max_fetch_size): at least max_message_bytes, and at least 1 MiB (the clients' default)."""
        return max(1024 * 1024, self.max_message_bytes)


SECRET_FIELDS = tuple(f.name for f in fields(Settings) if f.metadata.get("secret"))
MASK = "***"


def _shown(settings: Settings, f: dataclasses.Field):
    """The value of field ``f`` as it may be printed: a set secret is masked."""
    value = getattr(settings, f.name)
    return MASK if f.metadata.get("secret") and value else value


def _validate_kafka_security(s: Settings) -> None:
    """Check the Kafka security fields; ValueError naming the variable (never showing a secret)."""
    protocol = s.security_protocol.strip().upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise ValueError(f"CTLOOP_SECURITY_PROTOCOL={s.security_protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}")
    mechanism = s.sasl_mechanism.strip().upper()
    if mechanism not in SASL_MECHANISMS:
        raise ValueError(f"CTLOOP_SASL_MECHANISM={s.sasl_mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}")
    object.__setattr__(s, "security_protocol", protocol)
    object.__setattr__(s, "sasl_mechanism", mechanism)
    if protocol != "PLAINTEXT" and not s.bootstrap_servers:
        raise ValueError(f"CTLOOP_SECURITY_PROTOCOL={protocol} needs CTLOOP_BOOTSTRAP_SERVERS (the embedded broker "
                         f"started without it is plaintext)")
    if uses_sasl(protocol):
        for name in ("sasl_username", "sasl_password"):
            if not getattr(s, name):
                raise ValueError(f"CTLOOP_{name.upper()} is required with CTLOOP_SECURITY_PROTOCOL={protocol}")
    else:
        for name in ("sasl_username", "sasl_password"):
            if getattr(s, name):
                raise ValueError(f"CTLOOP_{name.upper()} is set but CTLOOP_SECURITY_PROTOCOL={protocol} does not use "
                                 f"SASL (set SASL_PLAINTEXT or SASL_SSL)")
    files = ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location")
    for name in files + ("ssl_key_password",):
        if getattr(s, name) and not uses_tls(protocol):
            raise ValueError(f"CTLOOP_{name.upper()} is set but CTLOOP_SECURITY_PROTOCOL={protocol} does not use "
                             f"TLS (set SSL or SASL_SSL)")
    for name in files:
        path = getattr(s, name)
        if path and not os.path.isfile(path):
            raise ValueError(f"CTLOOP_{name.upper()}={path!r}: no such file")
    if s.ssl_certificate_location and not s.ssl_key_location:
        raise ValueError("CTLOOP_SSL_KEY_LOCATION is required with CTLOOP_SSL_CERTIFICATE_LOCATION (its private key)")
    if s.ssl_key_location and not s.ssl_certificate_location:
        raise ValueError("CTLOOP_SSL_CERTIFICATE_LOCATION is required with CTLOOP_SSL_KEY_LOCATION (the key's certificate)")
    if s.ssl_key_password and not s.ssl_key_location:
        raise ValueError("CTLOOP_SSL_KEY_PASSWORD is set without CTLOOP_SSL_KEY_LOCATION")


def _parse(f: dataclasses.Field, raw: str, name: str):
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        return raw
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {kind}") from None


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) rows, for docs and `ctloop settings`."""
    import ast
    import inspect

    source = inspect.getsource(Settings)
    docs: dict[str, str] = {}
    tree = ast.parse(source)
    body = tree.body[0].body
    for node, nxt in zip(body, body[1:] + [None]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return [(f"CTLOOP_{f.name.upper()}", repr(MASK if f.metadata.get("secret") and f.default else f.default),
             docs.get(f.name, "")) for f in fields(Settings)]
