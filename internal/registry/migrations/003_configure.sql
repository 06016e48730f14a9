-- +goose Up
-- Configure stage: bulk jobs, the firmware catalogue and staged rollouts. Target sets are frozen here when an
-- operation starts, so anyone can see exactly which devices it covers, and per-device outcomes live here
-- rather than in Temporal history (workflows hold cursors and counters, never device lists).

CREATE TABLE IF NOT EXISTS jobs (
    id          text PRIMARY KEY,               -- the FleetJob workflow id
    kind        text NOT NULL CHECK (kind IN ('set_desired', 'set_tags', 'method')),
    query       text NOT NULL,
    spec        jsonb NOT NULL,                 -- patch, or method name and payload, rate and timeout
    state       text NOT NULL DEFAULT 'created',
    total       bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

-- One row per targeted device, numbered 0..total-1 so the workflow can split the set into ranges.
-- state: pending → running (desired written, waiting for the device's acknowledgement) → succeeded | failed |
-- timed_out | offline | cancelled.
CREATE TABLE IF NOT EXISTS job_devices (
    job_id     text   NOT NULL,
    seq        bigint NOT NULL,
    device_id  text   NOT NULL,
    state      text   NOT NULL DEFAULT 'pending',
    status     int,
    payload    jsonb,
    error      text   NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq)
);
CREATE INDEX IF NOT EXISTS job_devices_device ON job_devices (device_id);
CREATE INDEX IF NOT EXISTS job_devices_state ON job_devices (job_id, state);

CREATE TABLE IF NOT EXISTS firmware (
    version    text PRIMARY KEY,
    url        text NOT NULL,
    sha256     text NOT NULL,
    notes      text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS rollouts (
    id          text PRIMARY KEY,               -- the FirmwareRollout workflow id
    version     text NOT NULL REFERENCES firmware (version),
    query       text NOT NULL,
    spec        jsonb NOT NULL,
    state       text NOT NULL DEFAULT 'running',
    total       bigint NOT NULL DEFAULT 0,
    result      jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

-- The devices a rollout claimed when it started, in a shuffled but stable order (rank), so that a 1% canary
-- is spread over the fleet rather than the lowest ids. wave is set when the device's wave starts. active
-- claims are unique per device: two rollouts can never drive the same device at once.
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout_id    text   NOT NULL,
    rank          bigint NOT NULL,
    device_id     text   NOT NULL,
    wave          int,
    phase         text   NOT NULL DEFAULT 'queued',
    active        boolean NOT NULL DEFAULT true,
    prev_version  text   NOT NULL DEFAULT '',
    dispatched_at timestamptz,
    bake_since    timestamptz,
    rollback_at   timestamptz,
    reason        text   NOT NULL DEFAULT '',
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rollout_id, rank)
);
CREATE UNIQUE INDEX IF NOT EXISTS rollout_devices_active ON rollout_devices (device_id) WHERE active;
CREATE INDEX IF NOT EXISTS rollout_devices_phase ON rollout_devices (rollout_id, phase);
CREATE INDEX IF NOT EXISTS rollout_devices_device ON rollout_devices (device_id);
