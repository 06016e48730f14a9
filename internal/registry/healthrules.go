package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// Health rules (docs/architecture.md, "Health rules") are definitions kept in health_rules, written by the
// HealthRuleSave and HealthRuleDelete workflows' activities and read by every check of a rule.

// groupUseHealthRule is device_group_uses.op_kind for a rule whose target names a group: the use lasts as
// long as the rule, so that `group delete` refuses a group a scheduled rule checks.
const groupUseHealthRule = "health_rule"

// SaveHealthRule creates or replaces a rule (fleet.HealthRuleStore). Its query is compiled with the groups
// it names, which are then recorded as used by the rule (and the groups it no longer names released), in
// one transaction. A query that does not compile is returned as the compiler's error.
func (r *Registry) SaveHealthRule(ctx context.Context, rule fleet.HealthRule) error {
	rule, err := fleet.PrepareHealthRule(rule)
	if err != nil {
		return err
	}
	limits, err := json.Marshal(rule.Rules)
	if err != nil {
		return fmt.Errorf("encode rule %s: %w", rule.Name, err)
	}
	var group any
	if rule.Group != "" {
		group = rule.Group
	}
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		c, err := r.targetsSQL(ctx, tx, rule.Query)
		if err != nil {
			return fmt.Errorf("rule %s: %w", rule.Name, err)
		}
		if _, err := tx.Exec(ctx, "DELETE FROM device_group_uses WHERE op_kind = $1 AND op_id = $2", groupUseHealthRule, rule.Name); err != nil {
			return fmt.Errorf("release groups of rule %s: %w", rule.Name, err)
		}
		if err := recordGroupUses(ctx, tx, groupUseHealthRule, rule.Name, c.Groups); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO health_rules (name, query, group_name, rules, every_ns) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (name) DO UPDATE SET query = EXCLUDED.query, group_name = EXCLUDED.group_name, rules = EXCLUDED.rules,
			every_ns = EXCLUDED.every_ns, updated_at = now()`, rule.Name, rule.Query, group, limits, int64(rule.Every))
		if err != nil {
			return fmt.Errorf("save rule %s: %w", rule.Name, err)
		}
		return nil
	})
}

// DeleteHealthRule deletes a rule, releases its groups and resolves its open alerts: no check will look at
// them again (fleet.HealthRuleStore).
func (r *Registry) DeleteHealthRule(ctx context.Context, name string) error {
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, "DELETE FROM health_rules WHERE name = $1", name)
		if err != nil {
			return fmt.Errorf("delete rule %s: %w", name, err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("rule %s: %w", name, fleet.ErrHealthRuleNotFound)
		}
		if _, err := tx.Exec(ctx, "DELETE FROM device_group_uses WHERE op_kind = $1 AND op_id = $2", groupUseHealthRule, name); err != nil {
			return fmt.Errorf("release groups of rule %s: %w", name, err)
		}
		if _, err := tx.Exec(ctx, "UPDATE alerts SET resolved_at = now() WHERE rule = $1 AND resolved_at IS NULL", name); err != nil {
			return fmt.Errorf("resolve alerts of rule %s: %w", name, err)
		}
		return nil
	})
}

// healthRuleColumns are the columns scanHealthRule reads, in its order.
const healthRuleColumns = "name, query, coalesce(group_name, ''), rules, every_ns, created_at, updated_at"

func scanHealthRule(row pgx.Row) (fleet.HealthRule, error) {
	var h fleet.HealthRule
	var limits []byte
	var every int64
	if err := row.Scan(&h.Name, &h.Query, &h.Group, &limits, &every, &h.CreatedAt, &h.UpdatedAt); err != nil {
		return h, err
	}
	h.Every = time.Duration(every)
	if err := json.Unmarshal(limits, &h.Rules); err != nil {
		return h, fmt.Errorf("rule %s: limits: %w", h.Name, err)
	}
	return h, nil
}

// loadHealthRule reads a rule (lock: "" or a locking clause such as " FOR SHARE").
func loadHealthRule(ctx context.Context, q queryRower, name, lock string) (fleet.HealthRule, error) {
	rows, err := q.Query(ctx, "SELECT "+healthRuleColumns+" FROM health_rules WHERE name = $1"+lock, name)
	if err != nil {
		return fleet.HealthRule{}, fmt.Errorf("load rule %s: %w", name, err)
	}
	h, err := pgx.CollectExactlyOneRow(rows, func(row pgx.CollectableRow) (fleet.HealthRule, error) { return scanHealthRule(row) })
	if errors.Is(err, pgx.ErrNoRows) {
		return h, fmt.Errorf("rule %s: %w", name, fleet.ErrHealthRuleNotFound)
	}
	if err != nil {
		return h, fmt.Errorf("load rule %s: %w", name, err)
	}
	return h, nil
}

// HealthRule returns a rule, or fleet.ErrHealthRuleNotFound (wrapped).
func (r *Registry) HealthRule(ctx context.Context, name string) (fleet.HealthRule, error) {
	return loadHealthRule(ctx, r.pool, name, "")
}

// HealthRuleView is a rule as `health rule list|show` print it: its definition and its latest check.
type HealthRuleView struct {
	fleet.HealthRule
	LastRun *HealthRun `json:"lastRun,omitempty"`
}

// ListHealthRules returns every rule by name, each with its latest check (through health_runs' rule index).
func (r *Registry) ListHealthRules(ctx context.Context) ([]HealthRuleView, error) {
	return listHealthRules(ctx, r.pool)
}

func listHealthRules(ctx context.Context, q queryRower) ([]HealthRuleView, error) {
	rows, err := q.Query(ctx, `SELECT `+healthRuleColumns+`, l.id, l.started_at, l.finished_at, l.summary
		FROM health_rules LEFT JOIN LATERAL (SELECT id, started_at, finished_at, summary FROM health_runs h
			WHERE h.rule = health_rules.name ORDER BY started_at DESC, id DESC LIMIT 1) l ON true
		ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list health rules: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (HealthRuleView, error) {
		var v HealthRuleView
		var limits, summary []byte
		var every int64
		var id *string
		var started *time.Time
		var finished *time.Time
		if err := row.Scan(&v.Name, &v.Query, &v.Group, &limits, &every, &v.CreatedAt, &v.UpdatedAt, &id, &started, &finished, &summary); err != nil {
			return v, err
		}
		v.Every = time.Duration(every)
		if err := json.Unmarshal(limits, &v.Rules); err != nil {
			return v, fmt.Errorf("rule %s: limits: %w", v.Name, err)
		}
		if id != nil {
			run := &HealthRun{ID: *id, Rule: v.Name, StartedAt: *started, FinishedAt: finished}
			if err := json.Unmarshal(summary, &run.Summary); err != nil {
				return v, fmt.Errorf("health run %s: summary: %w", *id, err)
			}
			v.LastRun = run
		}
		return v, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list health rules: %w", err)
	}
	return out, nil
}

// The registry is the health rules' store.
var _ fleet.HealthRuleStore = (*Registry)(nil)
