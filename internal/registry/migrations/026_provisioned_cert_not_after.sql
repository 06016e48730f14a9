-- +goose Up
-- A provisioned certificate's end (docs/architecture.md, "Device certificates"): the CLI stages each
-- certificate it issued with its NotAfter beside its fingerprint, and the batch that creates the device copies
-- both into devices (cert_fingerprint, cert_not_after), as a renewal records the certificates it signs
-- (migration 019). Operations' own staging tables are created by the registry with the column; those of a
-- provisioning under way during the upgrade get it here.
ALTER TABLE provision_rows ADD COLUMN IF NOT EXISTS cert_not_after timestamptz;
-- +goose StatementBegin
DO $$
DECLARE t text;
BEGIN
    FOR t IN SELECT staging_table FROM operations WHERE staging_table IS NOT NULL AND to_regclass(staging_table) IS NOT NULL LOOP
        EXECUTE format('ALTER TABLE %I ADD COLUMN IF NOT EXISTS cert_not_after timestamptz', t);
    END LOOP;
END $$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
DO $$
DECLARE t text;
BEGIN
    FOR t IN SELECT staging_table FROM operations WHERE staging_table IS NOT NULL AND to_regclass(staging_table) IS NOT NULL LOOP
        EXECUTE format('ALTER TABLE %I DROP COLUMN IF EXISTS cert_not_after', t);
    END LOOP;
END $$;
-- +goose StatementEnd
ALTER TABLE provision_rows DROP COLUMN IF EXISTS cert_not_after;
