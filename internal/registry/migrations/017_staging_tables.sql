-- +goose Up
-- A staging table per operation (docs/architecture.md, "Provisioning: staging and batches overlap"): a
-- manifest staged in chunks goes into its own unlogged table, provision_rows_<no>, created with the first
-- chunk and dropped whole when the workflow ends, instead of into the shared provision_rows, whose rows every
-- batch had to delete again (a million row deletions, and as many dead rows for vacuum). staging_table names
-- it; NULL means the operation's rows are in provision_rows (a single transaction's staging, and every
-- operation staged before this migration).
ALTER TABLE operations ADD COLUMN IF NOT EXISTS staging_table text
    CHECK (staging_table ~ '^provision_rows_[0-9]+$');

-- +goose Down
ALTER TABLE operations DROP COLUMN IF EXISTS staging_table;
