-- +goose Up
-- Gateways enforce the scheme's reported-properties schema when devices report (docs/architecture.md,
-- "Metadata scheme"), so they must learn at once that another version is in force: a change of a scheme row's
-- state (a candidate activated or refused) is announced on the device change channel as '*scheme'
-- (fleet.SchemeChanged), once per statement, and each gateway reads the scheme in force again. Inserting a
-- candidate changes nothing in force and is not announced.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION fleetflow_notify_scheme() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fleetflow_device', '*scheme');
    RETURN NULL;
END $$;
-- +goose StatementEnd
DROP TRIGGER IF EXISTS schemes_changed ON schemes;
CREATE TRIGGER schemes_changed AFTER UPDATE OF state OR DELETE ON schemes
    FOR EACH STATEMENT EXECUTE FUNCTION fleetflow_notify_scheme();

-- +goose Down
DROP TRIGGER IF EXISTS schemes_changed ON schemes;
DROP FUNCTION IF EXISTS fleetflow_notify_scheme();
