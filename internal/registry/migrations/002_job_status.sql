-- +goose Up
-- Job progress reported by devices on devices/{id}/jobs/{jobId}/status (docs/architecture.md, "The device
-- protocol"). One row per (job, device) holding the latest status: rollouts poll aggregates of it per wave
-- (GROUP BY status over one job_id, which the primary key's leading column serves), so the table stays as small
-- as the fleet times the jobs kept.
CREATE TABLE IF NOT EXISTS device_job_status (
    job_id     text        NOT NULL,
    device_id  text        NOT NULL,
    status     text        NOT NULL,
    reason     text        NOT NULL DEFAULT '',
    progress   int         NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, device_id)
);
