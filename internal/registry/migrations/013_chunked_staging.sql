-- +goose Up
-- Chunked staging (docs/architecture.md, "Provisioning: staging and batches overlap"): a large manifest is
-- staged in chunks that commit one by one, and the ProvisionFleet workflow starts after the first and follows
-- the staged-rows cursor (operations.rows) until staging is 'done'. 'open' while chunks are still coming;
-- 'abandoned' when the CLI gave up (a read error) or stopped refreshing staged_at (killed): the workflow
-- then fails instead of waiting for rows that will never come. Operations staged in one transaction, as
-- every earlier one was, are 'done' from the start.
ALTER TABLE operations ADD COLUMN IF NOT EXISTS staging text NOT NULL DEFAULT 'done'
    CHECK (staging IN ('open', 'done', 'abandoned'));
-- When the staging CLI last showed it was alive (a chunk committed, or its heartbeat while it reads).
ALTER TABLE operations ADD COLUMN IF NOT EXISTS staged_at timestamptz;

-- +goose Down
ALTER TABLE operations DROP COLUMN IF EXISTS staged_at;
ALTER TABLE operations DROP COLUMN IF EXISTS staging;
