-- Fields added to the events after 001_tables.sql was first applied (each with an Avro default, so
-- older events fill them with it). ALTER ... IF NOT EXISTS keeps this idempotent on existing databases.

-- TrainingTriggered.idempotency_key: equal automatic decisions carry equal keys (docs/PROCESSORS.md).
ALTER TABLE {db}.triggers ADD COLUMN IF NOT EXISTS idempotency_key Nullable(String);

-- Decisions name what they expect (compare-and-set on the log, docs/SERVING.md).
ALTER TABLE {db}.models_promoted ADD COLUMN IF NOT EXISTS expected_champion Nullable(String);
ALTER TABLE {db}.models_promoted ADD COLUMN IF NOT EXISTS expected_state Nullable(String);
ALTER TABLE {db}.models_promoted ADD COLUMN IF NOT EXISTS forced Bool;
ALTER TABLE {db}.models_promoted ADD COLUMN IF NOT EXISTS shadow_revision Nullable(Int64);
ALTER TABLE {db}.models_rolled_back ADD COLUMN IF NOT EXISTS expected_champion Nullable(String);
ALTER TABLE {db}.models_rolled_back ADD COLUMN IF NOT EXISTS expected_state Nullable(String);
ALTER TABLE {db}.models_rolled_back ADD COLUMN IF NOT EXISTS forced Bool;
ALTER TABLE {db}.candidates_rejected ADD COLUMN IF NOT EXISTS expected_champion Nullable(String);
ALTER TABLE {db}.candidates_rejected ADD COLUMN IF NOT EXISTS expected_state Nullable(String);
ALTER TABLE {db}.candidates_rejected ADD COLUMN IF NOT EXISTS shadow_revision Nullable(Int64);

-- ShadowComparison.shadow_revision: the shadow assignment its counts belong to (docs/SERVING.md).
ALTER TABLE {db}.shadow_comparisons ADD COLUMN IF NOT EXISTS shadow_revision Nullable(Int64);
