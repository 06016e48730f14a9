-- +goose Up
-- Zero-touch enrollment (docs/architecture.md, "Zero-touch enrollment"): a group lets devices that are not
-- registered yet register themselves on first contact with a secret derived from the group key. The key is
-- stored only sealed (AES-256-GCM under the enrollment master key, which the database never sees).
-- registered and refused count the group's registrations; they are updated in the registering transaction.
CREATE TABLE IF NOT EXISTS enrollment_groups (
    name        text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('symmetric')),
    sealed_key  bytea NOT NULL,
    tags        jsonb NOT NULL DEFAULT '{}',
    desired     jsonb NOT NULL DEFAULT '{}',
    max_devices bigint NOT NULL DEFAULT 0 CHECK (max_devices >= 0),
    id_pattern  text NOT NULL DEFAULT '',
    disabled    boolean NOT NULL DEFAULT false,
    registered  bigint NOT NULL DEFAULT 0,
    refused     bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The group a device registered through, so that a repeated first contact is recognised and the report can
-- count devices per group.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS enrollment_group text;

-- +goose Down
ALTER TABLE devices DROP COLUMN IF EXISTS enrollment_group;
DROP TABLE IF EXISTS enrollment_groups;
