-- +goose Up
-- Zero-touch enrollment (docs/architecture.md, "Zero-touch enrollment"): a group lets devices that are not
-- registered yet register themselves on first contact with a secret derived from the group key. The key is
-- stored only sealed (AES-256-GCM under the enrollment master key, which the database never sees); an x509
-- group keeps the public certificate of the CA that signs its devices' client certificates.
-- registered and refused count the group's registrations; they are updated in the registering transaction.
CREATE TABLE IF NOT EXISTS enrollment_groups (
    name        text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('symmetric', 'x509')),
    sealed_key  bytea,            -- symmetric groups
    ca_cert     text,             -- x509 groups: the PEM CA that signs their devices' certificates
    tags        jsonb NOT NULL DEFAULT '{}',
    desired     jsonb NOT NULL DEFAULT '{}',
    max_devices bigint NOT NULL DEFAULT 0 CHECK (max_devices >= 0),
    id_pattern  text NOT NULL DEFAULT '',
    disabled    boolean NOT NULL DEFAULT false,
    registered  bigint NOT NULL DEFAULT 0,
    refused     bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'symmetric') = (sealed_key IS NOT NULL) AND (kind = 'x509') = (ca_cert IS NOT NULL))
);

-- The group a device registered through, so that a repeated first contact is recognised and the report can
-- count devices per group.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS enrollment_group text;

-- Gateways read the groups every few seconds; a change is announced at once, so that a group is usable (and an
-- x509 group's CA trusted by the TLS listeners) the moment it is created, and stops the moment it is disabled.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION fleetflow_notify_enrollment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fleetflow_device', '*enrollment');
    RETURN NULL;
END $$;
-- +goose StatementEnd
DROP TRIGGER IF EXISTS enrollment_groups_changed ON enrollment_groups;
CREATE TRIGGER enrollment_groups_changed
    AFTER INSERT OR DELETE OR UPDATE OF disabled, sealed_key, ca_cert, id_pattern ON enrollment_groups
    FOR EACH STATEMENT EXECUTE FUNCTION fleetflow_notify_enrollment();

-- +goose Down
DROP TRIGGER IF EXISTS enrollment_groups_changed ON enrollment_groups;
DROP FUNCTION IF EXISTS fleetflow_notify_enrollment();
ALTER TABLE devices DROP COLUMN IF EXISTS enrollment_group;
DROP TABLE IF EXISTS enrollment_groups;
