-- +goose Up
-- Device groups (docs/architecture.md, "Groups"): a dynamic group is a twin query, evaluated whenever it is
-- used; a static group is a list of device ids. Operations that select their targets through a group record
-- it when they create their target set, so that a group in use by a running operation is not deleted.
CREATE TABLE IF NOT EXISTS device_groups (
    name       text PRIMARY KEY,
    query      text,                             -- the WHERE condition of a dynamic group; NULL for a static one
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,63}$')
);
CREATE TABLE IF NOT EXISTS device_group_members (
    group_name text NOT NULL REFERENCES device_groups (name) ON DELETE CASCADE,
    device_id  text NOT NULL,
    added_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, device_id)
);
CREATE TABLE IF NOT EXISTS device_group_uses (
    group_name text NOT NULL REFERENCES device_groups (name) ON DELETE CASCADE,
    op_kind    text NOT NULL,                    -- job | rollout
    op_id      text NOT NULL,
    used_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, op_id)
);

-- +goose Down
DROP TABLE IF EXISTS device_group_uses;
DROP TABLE IF EXISTS device_group_members;
DROP TABLE IF EXISTS device_groups;
