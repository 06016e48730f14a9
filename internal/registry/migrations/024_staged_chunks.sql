-- +goose Up
-- Staged chunks (docs/architecture.md, "Provisioning: staged chunks"): a manifest staged in chunks goes into
-- its own table provision_chunks_<no>, one row per record of many manifest rows (a compact encoding in one
-- bytea), instead of one row per manifest row in provision_rows_<no>: Postgres stores a few hundred rows per
-- million devices and keeps no per-device index for staging. Operations staged into provision_rows_<no>
-- before this migration keep their tables, read as before.
ALTER TABLE operations DROP CONSTRAINT IF EXISTS operations_staging_table_check;
ALTER TABLE operations ADD CONSTRAINT operations_staging_table_check
    CHECK (staging_table ~ '^provision_(rows|chunks)_[0-9]+$');

-- +goose Down
ALTER TABLE operations DROP CONSTRAINT IF EXISTS operations_staging_table_check;
ALTER TABLE operations ADD CONSTRAINT operations_staging_table_check
    CHECK (staging_table ~ '^provision_rows_[0-9]+$') NOT VALID;
