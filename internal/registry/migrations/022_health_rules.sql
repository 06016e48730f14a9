-- +goose Up
-- Health rules (docs/architecture.md, "Health rules"): a named health check with its own target (a twin
-- query, or a group through IN_GROUP), its own limits and its own Temporal Schedule. The row is the rule's
-- definition, written by the HealthRuleSave workflow; each check of the rule reads it again, so that a
-- dynamic group's membership is resolved at every run.
CREATE TABLE IF NOT EXISTS health_rules (
    name       text PRIMARY KEY,
    query      text NOT NULL,                    -- the target query (a group's is SELECT * FROM devices WHERE IN_GROUP('g'))
    group_name text,                             -- the group the rule was given with --group, for display
    rules      jsonb NOT NULL,                   -- health.Rules: offlineAfter, ackWithin, expiringWithin (ns)
    every_ns   bigint NOT NULL,                  -- the schedule's period
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,63}$')
);

-- Alerts belong to a rule: two rules that cover one device open and resolve their own alerts (a device 5
-- minutes offline is an alert of a 2-minute rule and not of the fleet-wide 10-minute check). The fleet-wide
-- check is the rule 'fleet'; the alerts it raised before rules existed are its own.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS rule text NOT NULL DEFAULT 'fleet';
CREATE UNIQUE INDEX IF NOT EXISTS alerts_open_rule ON alerts (rule, device_id, kind) WHERE resolved_at IS NULL;
DROP INDEX IF EXISTS alerts_open;

ALTER TABLE health_runs ADD COLUMN IF NOT EXISTS rule text NOT NULL DEFAULT 'fleet';
CREATE INDEX IF NOT EXISTS health_runs_rule ON health_runs (rule, started_at);

-- +goose Down
DROP INDEX IF EXISTS health_runs_rule;
ALTER TABLE health_runs DROP COLUMN IF EXISTS rule;
DELETE FROM alerts WHERE rule <> 'fleet';
CREATE UNIQUE INDEX IF NOT EXISTS alerts_open ON alerts (device_id, kind) WHERE resolved_at IS NULL;
DROP INDEX IF EXISTS alerts_open_rule;
ALTER TABLE alerts DROP COLUMN IF EXISTS rule;
DROP TABLE IF EXISTS health_rules;
