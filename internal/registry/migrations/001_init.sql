-- +goose Up
-- Device registry: identities, credentials (digests only), connection state and the twin, in one row per
-- device so that bulk provisioning is a single insert stream and twin queries never join.
CREATE TABLE IF NOT EXISTS devices (
    id               text PRIMARY KEY,
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled', 'retired')),
    secret1_hash     bytea,
    secret2_hash     bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    provisioned_by   text,
    online           boolean NOT NULL DEFAULT false,
    session          bigint NOT NULL DEFAULT 0,
    last_seen        timestamptz,
    connected_at     timestamptz,
    tags             jsonb NOT NULL DEFAULT '{}',
    tags_version     bigint NOT NULL DEFAULT 1,
    desired          jsonb NOT NULL DEFAULT '{}',
    desired_version  bigint NOT NULL DEFAULT 1,
    reported         jsonb NOT NULL DEFAULT '{}',
    reported_version bigint NOT NULL DEFAULT 1,
    twin_version     bigint NOT NULL DEFAULT 1
);

-- Selective tag queries compile to containment (tags @> $1), which this index answers.
CREATE INDEX IF NOT EXISTS devices_tags_gin ON devices USING gin (tags jsonb_path_ops);

-- Manifest rows staged by the CLI (COPY) for one provisioning operation. seq numbers the rows 0..n-1 so the
-- workflow can split them into ranges; line is the row's line in the file, for error reports. tags is text, not
-- jsonb, so that a malformed row can be staged and reported by line rather than failing the whole COPY.
-- Unlogged: staged rows are transient and halving their write cost matters at a million rows; a database crash
-- empties the table, which ProvisionBatch detects and reports (re-running the manifest is idempotent).
CREATE UNLOGGED TABLE IF NOT EXISTS provision_rows (
    op_no       bigint NOT NULL,
    seq         bigint NOT NULL,
    line        bigint NOT NULL,
    id          text   NOT NULL DEFAULT '',
    tags        text   NOT NULL DEFAULT '{}',
    secret_hash bytea,
    parse_error text,
    PRIMARY KEY (op_no, seq)
);

-- Outcome of every staged row that did not simply become a new device: invalid rows and devices that existed.
CREATE TABLE IF NOT EXISTS provision_results (
    op      text   NOT NULL,
    line    bigint NOT NULL,
    id      text   NOT NULL,
    outcome text   NOT NULL CHECK (outcome IN ('invalid', 'exists')),
    reason  text   NOT NULL DEFAULT '',
    PRIMARY KEY (op, line)
);

-- Per-batch counters, written in the same transaction as the batch's devices, so a retried batch is counted once.
CREATE TABLE IF NOT EXISTS provision_batches (
    op       text   NOT NULL,
    first    bigint NOT NULL,
    created  int    NOT NULL,
    existing int    NOT NULL,
    invalid  int    NOT NULL,
    PRIMARY KEY (op, first)
);

-- Operations staged by the CLI: how many rows, so the workflow can plan its batches without reading rows.
-- no is a compact key for the staged rows (a million copies of a long text id would double their index).
CREATE TABLE IF NOT EXISTS operations (
    id         text PRIMARY KEY,
    no         bigserial UNIQUE,
    kind       text NOT NULL,
    rows       bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Gateways cache credentials and status; any change that affects who may connect is announced on
-- fleetflow_device so every gateway drops its cache entry and kicks a session that is no longer allowed.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION fleetflow_notify_device() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('fleetflow_device', OLD.id);
        RETURN OLD;
    END IF;
    PERFORM pg_notify('fleetflow_device', NEW.id);
    RETURN NEW;
END $$;
-- +goose StatementEnd

DROP TRIGGER IF EXISTS devices_auth_changed ON devices;
CREATE TRIGGER devices_auth_changed
    AFTER UPDATE OF status, secret1_hash, secret2_hash ON devices
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.secret1_hash IS DISTINCT FROM NEW.secret1_hash
          OR OLD.secret2_hash IS DISTINCT FROM NEW.secret2_hash)
    EXECUTE FUNCTION fleetflow_notify_device();

DROP TRIGGER IF EXISTS devices_deleted ON devices;
CREATE TRIGGER devices_deleted AFTER DELETE ON devices FOR EACH ROW EXECUTE FUNCTION fleetflow_notify_device();
