-- ctloop analytics views. Replaced on every start (CREATE OR REPLACE), so edits here take effect.
-- Tables are read with FINAL: an event delivered twice counts once.

-- Which labeled-example offsets each model version was trained on (training runs and registrations).
CREATE OR REPLACE VIEW {db}.model_lineage AS
SELECT deployment, model_version, topic, partition,
       min(start_offset) AS start_offset, max(end_offset) AS end_offset, min(trained_at) AS trained_at
FROM (
    SELECT deployment, model_version, lineage_topic AS topic, p AS partition, s AS start_offset, e AS end_offset,
           event_time AS trained_at
    FROM {db}.training_runs_finished FINAL
    ARRAY JOIN lineage_partitions AS p, lineage_start_offsets AS s, lineage_end_offsets AS e
    UNION ALL
    SELECT deployment, model_version, assumeNotNull(lineage_topic) AS topic, p AS partition, s AS start_offset,
           e AS end_offset, event_time AS trained_at
    FROM {db}.models_registered FINAL
    ARRAY JOIN lineage_partitions AS p, lineage_start_offsets AS s, lineage_end_offsets AS e
    WHERE lineage_topic IS NOT NULL
)
GROUP BY deployment, model_version, topic, partition;

-- Which events trained which model version: lineage offset ranges joined with the labeled examples.
CREATE OR REPLACE VIEW {db}.model_training_examples AS
SELECT l.deployment AS deployment, l.model_version AS model_version, e.prediction_id AS prediction_id,
       e.event_id AS labeled_event_id, e.feedback_event_id AS feedback_event_id, e.label AS label,
       e.correct AS correct, e.feedback_time AS feedback_time, e.kafka_partition AS partition,
       e.kafka_offset AS offset
FROM {db}.model_lineage AS l
INNER JOIN (SELECT * FROM {db}.labeled_examples FINAL) AS e
    ON e.deployment = l.deployment AND e.kafka_topic = l.topic AND e.kafka_partition = l.partition
WHERE e.kafka_offset >= l.start_offset AND e.kafka_offset < l.end_offset;

-- Feedback-loop funnel per deployment: logged -> reviewed -> added to training -> trained on.
CREATE OR REPLACE VIEW {db}.feedback_funnel AS
SELECT deployment, sum(logged) AS logged, sum(reviewed) AS reviewed,
       sum(added) AS added_to_training, sum(trained) AS trained_on
FROM (
    SELECT deployment, count() AS logged, toUInt64(0) AS reviewed, toUInt64(0) AS added, toUInt64(0) AS trained
    FROM {db}.predictions FINAL WHERE role != 'shadow' GROUP BY deployment
    UNION ALL
    SELECT deployment, toUInt64(0), uniqExact(prediction_id), toUInt64(0), toUInt64(0)
    FROM {db}.feedback FINAL GROUP BY deployment
    UNION ALL
    SELECT deployment, toUInt64(0), toUInt64(0), uniqExact(prediction_id), toUInt64(0)
    FROM {db}.labeled_examples FINAL WHERE role != 'shadow' GROUP BY deployment
    UNION ALL
    SELECT deployment, toUInt64(0), toUInt64(0), toUInt64(0), uniqExact(prediction_id)
    FROM {db}.model_training_examples GROUP BY deployment
)
GROUP BY deployment;

-- Drift measurements over time.
CREATE OR REPLACE VIEW {db}.drift_over_time AS
SELECT deployment, model_version, window_start, window_end, window_size, reference, drift_share, drift_threshold,
       drift_detected, error_rate, error_drift_detected, drifted_features, feature_psi
FROM {db}.drift FINAL;

-- Live accuracy of primary (and canary) predictions per minute and model version.
CREATE OR REPLACE VIEW {db}.accuracy_over_time AS
SELECT deployment, model_version, toStartOfMinute(prediction_time) AS minute, count() AS labeled,
       avg(correct) AS accuracy
FROM {db}.labeled_examples FINAL
WHERE role != 'shadow'
GROUP BY deployment, model_version, minute;

-- Model comparison over time: shadow comparisons, promotions, rejections and rollbacks on one timeline.
-- primary_* is the champion (or the version rolled back from), shadow_* the challenger (or rolled back to).
CREATE OR REPLACE VIEW {db}.model_comparison AS
SELECT deployment, event_time, 'shadow_comparison' AS kind, primary_version, shadow_version,
       toNullable(primary_metrics['accuracy']) AS primary_accuracy, toNullable(shadow_metrics['accuracy']) AS shadow_accuracy,
       labeled_samples, toNullable(agreement_rate) AS agreement_rate, mcnemar_pvalue, '' AS reason
FROM {db}.shadow_comparisons FINAL
UNION ALL
SELECT deployment, event_time, 'promoted', ifNull(previous_version, ''), model_version, NULL, NULL, 0, NULL, NULL, reason
FROM {db}.models_promoted FINAL
UNION ALL
SELECT deployment, event_time, 'rolled_back', from_version, to_version, NULL, NULL, 0, NULL, NULL, reason
FROM {db}.models_rolled_back FINAL
UNION ALL
SELECT deployment, event_time, concat('rejected_', stage), ifNull(champion_version, ''), model_version,
       toNullable(champion_metrics['accuracy']), toNullable(metrics['accuracy']), 0, NULL, NULL,
       arrayStringConcat(reasons, ' | ')
FROM {db}.candidates_rejected FINAL;

-- Feedback-loop latency: from a feedback event to the registration of the first model trained on it.
CREATE OR REPLACE VIEW {db}.feedback_latency AS
SELECT deployment, feedback_event_id, prediction_id, feedback_time,
       argMin(model_version, model_registered_at) AS first_model_version,
       min(model_registered_at) AS registered_at,
       (toUnixTimestamp64Milli(registered_at) - toUnixTimestamp64Milli(feedback_time)) / 1000 AS latency_s
FROM (
    SELECT t.deployment AS deployment, t.feedback_event_id AS feedback_event_id, t.prediction_id AS prediction_id,
           t.feedback_time AS feedback_time, t.model_version AS model_version,
           r.first_registered_at AS model_registered_at
    FROM {db}.model_training_examples AS t
    INNER JOIN (SELECT deployment, model_version, min(event_time) AS first_registered_at
                FROM {db}.models_registered FINAL GROUP BY deployment, model_version) AS r
        ON t.deployment = r.deployment AND t.model_version = r.model_version
)
GROUP BY deployment, feedback_event_id, prediction_id, feedback_time;
