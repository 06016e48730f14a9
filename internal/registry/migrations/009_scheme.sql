-- +goose Up
-- The metadata scheme (docs/architecture.md, "Metadata scheme"): versions of a JSON Schema for tags (and
-- optionally reported properties), and the checks that list the devices of the fleet violating one.

-- Every `scheme set` is a new version, kept: a candidate while its check runs, then active (the newest active
-- version is the scheme in force) or refused (the fleet violated it and violations were not allowed).
CREATE TABLE IF NOT EXISTS schemes (
    version      bigserial PRIMARY KEY,
    tags         jsonb NOT NULL,
    reported     jsonb,
    state        text NOT NULL DEFAULT 'candidate' CHECK (state IN ('candidate', 'active', 'refused')),
    allow_violations boolean NOT NULL DEFAULT false,
    set_by       text NOT NULL UNIQUE,          -- the SchemeCheck workflow that set it: a retry finds its row
    created_at   timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz
);

-- One row per check of the fleet against a version, with its counts; the per-device violations of the newest
-- checks only (older checks' violations are dropped when a check starts, so the table stays bounded).
CREATE TABLE IF NOT EXISTS scheme_checks (
    id          text PRIMARY KEY,               -- the SchemeCheck workflow id
    version     bigint NOT NULL REFERENCES schemes (version),
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    checked     bigint NOT NULL DEFAULT 0,
    violating   bigint NOT NULL DEFAULT 0,
    cursor      text NOT NULL DEFAULT ''        -- the last device id a committed batch checked
);
CREATE TABLE IF NOT EXISTS scheme_violations (
    check_id   text NOT NULL REFERENCES scheme_checks (id) ON DELETE CASCADE,
    device_id  text NOT NULL,
    violations jsonb NOT NULL,                  -- [{"path": "tags.floor", "rule": "got string, want integer"}, ...]
    PRIMARY KEY (check_id, device_id)
);

-- +goose Down
DROP TABLE IF EXISTS scheme_violations;
DROP TABLE IF EXISTS scheme_checks;
DROP TABLE IF EXISTS schemes;
