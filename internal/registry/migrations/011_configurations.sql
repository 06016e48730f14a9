-- +goose Up
-- Declarative configurations (docs/architecture.md, "Declarative configurations"): a merge patch kept applied
-- to every device a target selects, now and later. The FleetConfiguration workflow of each configuration
-- writes its row; config_devices records, per device, the version applied, the device's tags version when it
-- was evaluated and the keys the configuration owns there, written in the same transaction as the twin write,
-- so that a set-based query finds the devices that are behind without reading the whole fleet.
CREATE TABLE IF NOT EXISTS configurations (
    name         text PRIMARY KEY,
    target_query text NOT NULL DEFAULT '',
    target_group text NOT NULL DEFAULT '',
    priority     int  NOT NULL,
    section      text NOT NULL CHECK (section IN ('desired', 'tags')),
    patch        jsonb NOT NULL,
    keys         text[] NOT NULL,
    metrics      jsonb NOT NULL DEFAULT '[]',
    version      bigint NOT NULL,
    state        text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'paused')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- state: applied (written, waiting for the device to report it) → acked; failed (refused by the registry);
-- superseded (higher-ranked configurations own every key here). stale: another configuration's change may
-- have moved who owns a key, so the device is evaluated again.
CREATE TABLE IF NOT EXISTS config_devices (
    config       text   NOT NULL REFERENCES configurations (name) ON DELETE CASCADE,
    device_id    text   NOT NULL,
    version      bigint NOT NULL,
    tags_version bigint NOT NULL,
    keys         text[] NOT NULL DEFAULT '{}',
    state        text   NOT NULL CHECK (state IN ('applied', 'acked', 'failed', 'superseded')),
    error        text   NOT NULL DEFAULT '',
    stale        boolean NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (config, device_id)
);
CREATE INDEX IF NOT EXISTS config_devices_state ON config_devices (config, state);
CREATE INDEX IF NOT EXISTS config_devices_device ON config_devices (device_id);

-- Reconcilers wake early on what can change a configuration's devices: new devices, retags, connections.
-- Once per statement, like the insert notice of migration 007: a batch of ten thousand connections is one
-- notice, and Postgres folds identical notices of one transaction into one.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION fleetflow_notify_config_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fleetflow_config', TG_ARGV[0]);
    RETURN NULL;
END $$;
-- +goose StatementEnd

DROP TRIGGER IF EXISTS devices_config_wake_insert ON devices;
CREATE TRIGGER devices_config_wake_insert AFTER INSERT ON devices FOR EACH STATEMENT
    EXECUTE FUNCTION fleetflow_notify_config_wake('inserted');
DROP TRIGGER IF EXISTS devices_config_wake_tags ON devices;
CREATE TRIGGER devices_config_wake_tags AFTER UPDATE OF tags ON devices FOR EACH STATEMENT
    EXECUTE FUNCTION fleetflow_notify_config_wake('tags');
DROP TRIGGER IF EXISTS devices_config_wake_online ON devices;
CREATE TRIGGER devices_config_wake_online AFTER UPDATE OF online ON devices FOR EACH STATEMENT
    EXECUTE FUNCTION fleetflow_notify_config_wake('online');

-- +goose Down
DROP TRIGGER IF EXISTS devices_config_wake_online ON devices;
DROP TRIGGER IF EXISTS devices_config_wake_tags ON devices;
DROP TRIGGER IF EXISTS devices_config_wake_insert ON devices;
DROP FUNCTION IF EXISTS fleetflow_notify_config_wake();
DROP TABLE IF EXISTS config_devices;
DROP TABLE IF EXISTS configurations;
