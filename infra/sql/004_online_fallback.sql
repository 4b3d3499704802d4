-- OnlineFallbackSwitched (model-updates): an online learner engaged in place of the champion, or retired
-- (docs/SERVING.md "Online fallback"). Whether it is active now is the fold of model-updates in log order
-- (kafka_offset: the topic has one partition), see the online_fallback view in 002_views.sql.
CREATE TABLE IF NOT EXISTS {db}.online_fallback_switches (
    event_id UUID,
    event_time DateTime64(3, 'UTC'),
    deployment LowCardinality(String),
    active Bool,
    learner LowCardinality(String),
    model_version String,
    champion_version Nullable(String),
    decided_by LowCardinality(String),
    reason String,
    evidence Map(String, String),
    expected_decision Nullable(String),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (deployment, event_time, event_id);

-- The decisions the online-fallback fold reads, in log order (model-updates has one partition): switches,
-- promotions and rollbacks. Whether a switch was applied (its expected_decision was still the latest
-- decision) and so whether the fallback is active is decided by streams.fallback_fold.FallbackFold over
-- these rows (infra/report.py), the same rule every process applies. Kept here, not in 002_views.sql,
-- because a view needs its tables to exist first.
CREATE OR REPLACE VIEW {db}.online_fallback_decisions AS
SELECT deployment, kafka_offset, event_time, event_id, if(active, 'fallback_engaged', 'fallback_retired') AS kind,
       active, model_version, champion_version, reason, expected_decision
FROM {db}.online_fallback_switches FINAL
UNION ALL
SELECT deployment, kafka_offset, event_time, event_id, 'promoted', false, model_version, previous_version, reason, NULL
FROM {db}.models_promoted FINAL
UNION ALL
SELECT deployment, kafka_offset, event_time, event_id, 'rolled_back', false, to_version, from_version, reason, NULL
FROM {db}.models_rolled_back FINAL;
