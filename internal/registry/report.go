package registry

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/health"
)

// ReportHealthRuns is how many of the latest health checks FleetReport.Health holds: enough for a trend
// over a day of hourly checks, few enough for one line of a terminal.
const ReportHealthRuns = 12

// FleetReport is the registry's side of `fleetflow report`: the fleet at a glance. All of it is read from
// one snapshot, so the sections agree (the firmware counts add up to Active + Disabled).
type FleetReport struct {
	At       time.Time      `json:"at"` // when the snapshot was taken, by the database's clock
	Devices  DeviceCounts   `json:"devices"`
	Firmware []VersionCount `json:"firmware"` // most devices first, then by version
	Alerts   []KindCount    `json:"alerts"`   // open alerts: every kind of AlertKinds in its order, then others by name
	Health   []HealthRun    `json:"health"`   // the fleet-wide check's latest runs with a summary, oldest first
	// HealthRules are the health rules with their latest checks, by name (docs/architecture.md, "Health
	// rules"); their runs are not in Health, whose trend is the fleet-wide check's.
	HealthRules []HealthRuleView `json:"healthRules"`
	// Groups are the device groups with their member counts now, by name (at most ReportGroups).
	Groups []GroupCount `json:"groups"`
}

// ReportGroups bounds the groups a report counts: each costs one query over the devices it selects.
const ReportGroups = 50

// GroupCount is a group in the report (docs/architecture.md, "Groups").
type GroupCount struct {
	Name    string `json:"name"`
	Static  bool   `json:"static"`
	Members int64  `json:"members"`
}

// DeviceCounts counts the devices by status and, for those not retired, by connection.
type DeviceCounts struct {
	Total    int64 `json:"total"` // every registered device, retired ones included
	Active   int64 `json:"active"`
	Disabled int64 `json:"disabled"`
	Retired  int64 `json:"retired"`
	Online   int64 `json:"online"`  // not retired and connected
	Offline  int64 `json:"offline"` // not retired and not connected
}

// VersionCount is how many devices that are not retired report a firmware version. Version is "" for the
// devices that report none.
type VersionCount struct {
	Version string `json:"version"`
	Devices int64  `json:"devices"`
}

// KindCount is how many alerts of a kind are open.
type KindCount struct {
	Kind fleet.AlertKind `json:"kind"`
	Open int64           `json:"open"`
}

// HealthRun is one health check's row of health_runs.
type HealthRun struct {
	ID         string              `json:"id"`
	Rule       string              `json:"rule"` // the health rule checked (health.FleetRule: the fleet-wide check)
	StartedAt  time.Time           `json:"startedAt"`
	FinishedAt *time.Time          `json:"finishedAt,omitempty"`
	Summary    fleet.HealthSummary `json:"summary"`
}

// ReportData reads the fleet report. It is set-based so that it stays within about a second on a
// million devices: one pass over devices for the status × connection counts, one GROUP BY over the
// reported firmware version, one GROUP BY over the open alerts (bounded by devices × kinds) and the last
// ReportHealthRuns rows of health_runs through their index.
func (r *Registry) ReportData(ctx context.Context) (FleetReport, error) {
	var rep FleetReport
	// Repeatable read gives every query the same snapshot; read only lets Postgres skip any write bookkeeping.
	err := pgx.BeginTxFunc(ctx, r.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		d := &rep.Devices
		if err := tx.QueryRow(ctx, `
			SELECT now(), count(*),
			       count(*) FILTER (WHERE status = 'active'),
			       count(*) FILTER (WHERE status = 'disabled'),
			       count(*) FILTER (WHERE status = 'retired'),
			       count(*) FILTER (WHERE status <> 'retired' AND online),
			       count(*) FILTER (WHERE status <> 'retired' AND NOT online)
			FROM devices`).Scan(&rep.At, &d.Total, &d.Active, &d.Disabled, &d.Retired, &d.Online, &d.Offline); err != nil {
			return fmt.Errorf("count devices: %w", err)
		}

		rows, err := tx.Query(ctx, `
			SELECT coalesce(reported->'firmware'->>'version', ''), count(*)
			FROM devices WHERE status <> 'retired'
			GROUP BY 1 ORDER BY 2 DESC, 1`)
		if err != nil {
			return fmt.Errorf("count firmware versions: %w", err)
		}
		rep.Firmware, err = pgx.CollectRows(rows, pgx.RowToStructByPos[VersionCount])
		if err != nil {
			return fmt.Errorf("count firmware versions: %w", err)
		}

		rows, err = tx.Query(ctx, `SELECT kind, count(*) FROM alerts WHERE resolved_at IS NULL GROUP BY kind`)
		if err != nil {
			return fmt.Errorf("count open alerts: %w", err)
		}
		open, err := pgx.CollectRows(rows, pgx.RowToStructByPos[KindCount])
		if err != nil {
			return fmt.Errorf("count open alerts: %w", err)
		}
		rep.Alerts = alertsInKindOrder(open)

		// A check still running has the column's default '{}' and nothing to plot yet.
		rows, err = tx.Query(ctx, `
			SELECT id, rule, started_at, finished_at, summary FROM health_runs
			WHERE summary <> '{}'::jsonb AND rule = $2
			ORDER BY started_at DESC, id DESC LIMIT $1`, ReportHealthRuns, health.FleetRule)
		if err != nil {
			return fmt.Errorf("read health runs: %w", err)
		}
		rep.Health, err = pgx.CollectRows(rows, scanHealthRun)
		if err != nil {
			return fmt.Errorf("read health runs: %w", err)
		}
		slices.Reverse(rep.Health) // oldest first, the order a trend is read in
		if rep.HealthRules, err = listHealthRules(ctx, tx); err != nil {
			return err
		}

		rows, err = tx.Query(ctx, "SELECT name, query IS NULL FROM device_groups ORDER BY name LIMIT $1", ReportGroups)
		if err != nil {
			return fmt.Errorf("read groups: %w", err)
		}
		rep.Groups, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (GroupCount, error) {
			var g GroupCount
			return g, row.Scan(&g.Name, &g.Static)
		})
		if err != nil {
			return fmt.Errorf("read groups: %w", err)
		}
		for i := range rep.Groups {
			c, err := r.targetsSQL(ctx, tx, fleet.GroupQuery(rep.Groups[i].Name))
			if err != nil {
				return fmt.Errorf("group %s: %w", rep.Groups[i].Name, err)
			}
			if err := tx.QueryRow(ctx, "SELECT count(*) FROM ("+c.SQL+") t", c.Args...).Scan(&rep.Groups[i].Members); err != nil {
				return fmt.Errorf("count group %s: %w", rep.Groups[i].Name, err)
			}
		}
		return nil
	})
	if err != nil {
		return FleetReport{}, fmt.Errorf("fleet report: %w", err)
	}
	return rep, nil
}

// alertsInKindOrder lists every known kind, open or not, so a report shows the zeros too; kinds this
// version does not know (written by a newer health check) follow by name rather than being dropped.
func alertsInKindOrder(open []KindCount) []KindCount {
	n := map[fleet.AlertKind]int64{}
	for _, k := range open {
		n[k.Kind] += k.Open
	}
	out := make([]KindCount, 0, len(n)+len(AlertKinds()))
	for _, kind := range AlertKinds() {
		out = append(out, KindCount{Kind: kind, Open: n[kind]})
		delete(n, kind)
	}
	var rest []fleet.AlertKind
	for kind := range n {
		rest = append(rest, kind)
	}
	slices.Sort(rest)
	for _, kind := range rest {
		out = append(out, KindCount{Kind: kind, Open: n[kind]})
	}
	return out
}
