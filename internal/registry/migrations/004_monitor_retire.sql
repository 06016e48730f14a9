-- +goose Up
-- Monitor and retire stages: alerts raised by the scheduled health check, a summary per check, a timeline of
-- events per device, lineage between replaced devices, and the archive of retired devices.

ALTER TABLE devices ADD COLUMN IF NOT EXISTS retired_at timestamptz;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS replaces text;               -- the device this one replaced
ALTER TABLE devices ADD COLUMN IF NOT EXISTS replaced_by text;            -- the device that replaced this one
ALTER TABLE devices ADD COLUMN IF NOT EXISTS credential_expires_at timestamptz;  -- optional validity of the secrets

-- Alerts open and resolve by themselves: one open alert per device and kind (the partial unique index), with
-- when the problem was first and last seen by a health check.
CREATE TABLE IF NOT EXISTS alerts (
    id          bigserial PRIMARY KEY,
    device_id   text NOT NULL,
    kind        text NOT NULL,   -- offline | unhealthy | desired_pending | firmware_noncompliant | credential_expiring
    detail      text NOT NULL DEFAULT '',
    first_seen  timestamptz NOT NULL,
    last_seen   timestamptz NOT NULL,
    resolved_at timestamptz,
    acked_at    timestamptz,
    acked_by    text NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_open ON alerts (device_id, kind) WHERE resolved_at IS NULL;
CREATE INDEX IF NOT EXISTS alerts_device ON alerts (device_id, first_seen);

-- One row per health check: the fleet at a glance at that moment, for trends.
CREATE TABLE IF NOT EXISTS health_runs (
    id          text PRIMARY KEY,          -- the FleetHealthCheck workflow id (+ run)
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    summary     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS health_runs_started ON health_runs (started_at);

-- A device's timeline: what happened to it in every stage, for `fleetflow devices history`. Jobs, rollouts and
-- alerts have tables of their own and are joined in; this table holds the rest (connections, desired and tags
-- changes, status changes, lineage).
CREATE TABLE IF NOT EXISTS device_events (
    id        bigserial PRIMARY KEY,
    device_id text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    kind      text NOT NULL,
    detail    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS device_events_device ON device_events (device_id, at);

-- Retired devices' twins and timelines, kept for audit until `fleetflow purge` removes them past retention.
CREATE TABLE IF NOT EXISTS devices_archive (
    id          text PRIMARY KEY,
    retired_at  timestamptz NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    reason      text NOT NULL DEFAULT '',
    operation   text NOT NULL DEFAULT '',
    twin        jsonb NOT NULL,
    history     jsonb NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS devices_archive_retired ON devices_archive (retired_at);

-- When desired last changed, so that the health check can tell a device that has not acknowledged its desired
-- state for too long from one that was just asked. Kept by a trigger that only fires when desired_version
-- moves, so the hot reported-ingest path pays nothing but the WHEN test.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS desired_at timestamptz;
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION fleetflow_desired_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.desired_at := now();
    RETURN NEW;
END $$;
-- +goose StatementEnd
DROP TRIGGER IF EXISTS devices_desired_at ON devices;
CREATE TRIGGER devices_desired_at BEFORE UPDATE ON devices
    FOR EACH ROW WHEN (NEW.desired_version IS DISTINCT FROM OLD.desired_version) EXECUTE FUNCTION fleetflow_desired_at();

-- Jobs gain the retire stage's kinds: a decommission is a job over a frozen set of devices.
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('set_desired', 'set_tags', 'method', 'retire'));
