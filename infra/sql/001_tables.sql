-- ctloop analytics tables: one table per event type, filled by infra/clickhouse_sink.py.
-- {db} is replaced by CTLOOP_CLICKHOUSE_DATABASE. Applied idempotently at sink / sql / report start.
-- Every table: ReplacingMergeTree ordered by (..., event_id) so a re-delivered event collapses into one
-- row (views read with FINAL); partitioned by month; kafka_topic/kafka_partition/kafka_offset say where
-- the event was read (lineage joins and the sink's restart watermark use them).

CREATE DATABASE IF NOT EXISTS {db};

CREATE TABLE IF NOT EXISTS {db}.predictions (
    event_id UUID,
    event_time DateTime64(3, 'UTC'),
    prediction_id UUID,
    deployment LowCardinality(String),
    model_name LowCardinality(String),
    model_version LowCardinality(String),
    role LowCardinality(String),
    features Map(String, Float64),
    label Nullable(String),
    score Nullable(Float64),
    probabilities Map(String, Float64),
    latency_ms Float64,
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (deployment, event_time, event_id);

CREATE TABLE IF NOT EXISTS {db}.feedback (
    event_id UUID,
    event_time DateTime64(3, 'UTC'),
    prediction_id UUID,
    deployment LowCardinality(String),
    feedback_type LowCardinality(String),
    kind LowCardinality(String),
    label Nullable(String),
    verdict Nullable(String),
    reviewer Nullable(String),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (deployment, event_time, event_id);

CREATE TABLE IF NOT EXISTS {db}.deployment_configs (
    event_id UUID,
    event_time DateTime64(3, 'UTC'),
    deployment LowCardinality(String),
    revision Int64,
    change String,
    model_name String,
    feedback_loop_enabled Bool,
    continuous_training_enabled Bool,
    continuous_deployment_enabled Bool,
    trigger_threshold Int32,
    drift_threshold Float64,
    promotion_threshold Float64,
    shadow_model_version Nullable(String),
    settings_json String,
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (deployment, event_time, event_id);

CREATE TABLE IF NOT EXISTS {db}.labeled_examples (
    event_id UUID,
    event_time DateTime64(3, 'UTC'),
    prediction_id UUID,
    deployment LowCardinality(String),
    model_version LowCardinality(String),
    role LowCardinality(String),
    features Map(String, Float64),
    predicted_label Nullable(String),
    label String,
    correct Bool,
    feedback_event_id UUID,
    prediction_time DateTime64(3, 'UTC'),
    feedback_time DateTime64(3, 'UTC'),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (deployment, event_time, event_id);

CREATE TABLE IF NOT EXISTS {db}.feedback_stats (
    event_id UUID,
    event_time DateTime64(3, 'UTC'),
    deployment LowCardinality(String),
    predictions_logged Int64,
    feedback_received Int64,
    reviewed Int64,
    added_to_training Int64,
    reviewed_since_last_training Int64,
    trigger_threshold Int32,
    progress Float64,
    feedback_dead_lettered Int64,
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (deployment, event_time, event_id);

CREATE TABLE IF NOT EXISTS {db}.drift (
    event_id UUID,
    event_time DateTime64(3, 'UTC'),
    deployment LowCardinality(String),
    model_version LowCardinality(String),
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    window_size Int32,
    reference LowCardinality(String),
    drift_share Float64,
    drift_threshold Float64,
    drift_detected Bool,
    error_rate Nullable(Float64),
    error_drift_detected Bool,
    feature_psi Map(String, Float64),
    feature_ks Map(String, Float64),
    drifted_features Array(String),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (deployment, event_time, event_id);

CREATE TABLE IF NOT EXISTS {db}.triggers (
    event_id UUID,
    event_time DateTime64(3, 'UTC'),
    trigger_id UUID,
    deployment LowCardinality(String),
    reason LowCardinality(String),
    evidence Map(String, String),
    snapshot_topic String,
    snapshot_partitions Array(Int32),
    snapshot_start_offsets Array(Int64),
    snapshot_end_offsets Array(Int64),
    training_mode LowCardinality(String),
    requested_by Nullable(String),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (deployment, event_time, event_id);

CREATE TABLE IF NOT EXISTS {db}.training_runs_started (
    event_id UUID,
    event_time DateTime64(3, 'UTC'),
    run_id UUID,
    trigger_id UUID,
    deployment LowCardinality(String),
    trainer_id String,
    device String,
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (deployment, event_time, event_id);

CREATE TABLE IF NOT EXISTS {db}.training_runs_finished (
    event_id UUID,
    event_time DateTime64(3, 'UTC'),
    run_id UUID,
    trigger_id UUID,
    deployment LowCardinality(String),
    model_version String,
    metrics Map(String, Float64),
    lineage_topic String,
    lineage_partitions Array(Int32),
    lineage_start_offsets Array(Int64),
    lineage_end_offsets Array(Int64),
    lineage_row_count Int64,
    train_rows Int64,
    holdout_rows Int64,
    content_hash String,
    base_dataset Nullable(String),
    code_version String,
    environment Map(String, String),
    artifact_uri String,
    artifact_sha256 String,
    duration_ms Int64,
    samples_per_second Float64,
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (deployment, event_time, event_id);

CREATE TABLE IF NOT EXISTS {db}.training_runs_failed (
    event_id UUID,
    event_time DateTime64(3, 'UTC'),
    run_id UUID,
    trigger_id UUID,
    deployment LowCardinality(String),
    reason String,
    error_type LowCardinality(String),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (deployment, event_time, event_id);

CREATE TABLE IF NOT EXISTS {db}.models_registered (
    event_id UUID,
    event_time DateTime64(3, 'UTC'),
    deployment LowCardinality(String),
    model_name String,
    model_version String,
    run_id Nullable(UUID),
    trigger_id Nullable(UUID),
    alias LowCardinality(String),
    metrics Map(String, Float64),
    champion_version Nullable(String),
    champion_metrics Map(String, Float64),
    lineage_topic Nullable(String),
    lineage_partitions Array(Int32),
    lineage_start_offsets Array(Int64),
    lineage_end_offsets Array(Int64),
    lineage_row_count Nullable(Int64),
    artifact_uri String,
    artifact_sha256 String,
    model_factory String,
    model_config Map(String, String),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (deployment, event_time, event_id);

CREATE TABLE IF NOT EXISTS {db}.candidates_rejected (
    event_id UUID,
    event_time DateTime64(3, 'UTC'),
    deployment LowCardinality(String),
    model_version String,
    run_id Nullable(UUID),
    stage LowCardinality(String),
    reasons Array(String),
    metrics Map(String, Float64),
    champion_version Nullable(String),
    champion_metrics Map(String, Float64),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (deployment, event_time, event_id);

CREATE TABLE IF NOT EXISTS {db}.shadow_comparisons (
    event_id UUID,
    event_time DateTime64(3, 'UTC'),
    deployment LowCardinality(String),
    primary_version String,
    shadow_version String,
    paired_samples Int64,
    labeled_samples Int64,
    primary_metrics Map(String, Float64),
    shadow_metrics Map(String, Float64),
    agreement_rate Float64,
    primary_latency_p50_ms Float64,
    primary_latency_p95_ms Float64,
    shadow_latency_p50_ms Float64,
    shadow_latency_p95_ms Float64,
    mcnemar_pvalue Nullable(Float64),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (deployment, event_time, event_id);

CREATE TABLE IF NOT EXISTS {db}.models_promoted (
    event_id UUID,
    event_time DateTime64(3, 'UTC'),
    deployment LowCardinality(String),
    model_name String,
    model_version String,
    previous_version Nullable(String),
    decided_by LowCardinality(String),
    reason String,
    evidence Map(String, String),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (deployment, event_time, event_id);

CREATE TABLE IF NOT EXISTS {db}.models_rolled_back (
    event_id UUID,
    event_time DateTime64(3, 'UTC'),
    deployment LowCardinality(String),
    model_name String,
    from_version String,
    to_version String,
    decided_by LowCardinality(String),
    reason String,
    evidence Map(String, String),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (deployment, event_time, event_id);

CREATE TABLE IF NOT EXISTS {db}.dead_letters (
    event_id UUID,
    event_time DateTime64(3, 'UTC'),
    source_topic LowCardinality(String),
    source_partition Int32,
    source_offset Int64,
    key Nullable(String),
    value Nullable(String),
    reason String,
    error_type LowCardinality(String),
    component LowCardinality(String),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (component, event_time, event_id);
