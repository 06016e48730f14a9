-- +goose Up
-- New devices are announced too, once per statement (fleet.DevicesInserted), so that a gateway that
-- remembers an id as unknown admits it as soon as it is provisioned (docs/architecture.md, "Abuse: floods of
-- CONNECTs"). Once per statement rather than per row: a batch of provisioning inserts thousands of rows with
-- one COPY or INSERT ... SELECT, and every gateway would otherwise receive a notice for each.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION fleetflow_notify_devices_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fleetflow_device', '*inserted');
    RETURN NULL;
END $$;
-- +goose StatementEnd

DROP TRIGGER IF EXISTS devices_inserted ON devices;
CREATE TRIGGER devices_inserted AFTER INSERT ON devices FOR EACH STATEMENT
    EXECUTE FUNCTION fleetflow_notify_devices_inserted();

-- +goose Down
DROP TRIGGER IF EXISTS devices_inserted ON devices;
DROP FUNCTION IF EXISTS fleetflow_notify_devices_inserted();
