package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/health"
	"github.com/fleetflow/fleetflow/internal/query"
)

// healthLock serializes health checks: a scheduled check and a manual `health run` at the same moment would
// otherwise race to open the same alerts.
const healthLock = 0x666c686c // "flhl"

// maxComplianceRollouts bounds how many completed rollouts (the newest per distinct query) the firmware rule
// considers. Each is a condition tested on every device that no newer one selects (or a join, for a TOP
// query): about 0.08 s per million devices each (measured: the problem-finding statement took 0.75 s over a
// million devices with two rollouts, 1.4 s with ten of which the eight newest select nothing). Older
// rollouts whose query no newer one repeats are ignored, which an operator would rarely notice: the fleet
// has long moved on from them.
const maxComplianceRollouts = 10

// healthSettings hold for the check's transaction only. The problem-finding statement is costed in the
// millions, which makes Postgres JIT-compile it: at a million devices compiling took 0.47 s and saved less
// than it cost (1.15 s with JIT, 0.75 s without). work_mem lets the hash joins of the target sets that
// cannot be tested on the row (TOP queries) and the alerts' anti-join stay in memory.
var healthSettings = []string{"SET LOCAL jit = off", "SET LOCAL work_mem = '64MB'"}

// stampSQL formats a timestamptz expression as health.Stamp does, so problem details agree with the rules.
func stampSQL(expr string) string {
	return `to_char(` + expr + ` AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')`
}

// Conditions of the rules over the devices row d, with $1 the offline cutoff, $2 the
// acknowledgement cutoff and $3 the credential horizon. They mirror health.Evaluate; the integration tests
// compare the two on a generated fleet.
const (
	offlineCond = `NOT d.online AND coalesce(d.last_seen, d.created_at) < $1`
	// ->> yields NULL for a missing path or a non-object along it, as health's path does.
	unhealthyCond = `lower(d.reported -> 'health' ->> 'status') IN ('failing', 'unhealthy', 'critical')`
	// pendingKeys are the desired keys not reported back; the firmware key compares .version only.
	pendingKeys = `FROM jsonb_each(d.desired) e(k, v) WHERE CASE WHEN e.k = 'firmware'
		THEN (e.v ->> 'version') IS DISTINCT FROM (d.reported -> 'firmware' ->> 'version')
		ELSE e.v IS DISTINCT FROM d.reported -> e.k END`
	// The cheap tests first: most devices were not asked anything recently.
	pendingCond  = `coalesce(d.desired_at, d.created_at) < $2 AND d.desired <> '{}'::jsonb AND EXISTS (SELECT 1 ` + pendingKeys + `)`
	firmwareSQL  = `coalesce(d.reported -> 'firmware' ->> 'version', '')`
	expiringCond = `d.credential_expires_at < $3`
)

// complianceRollout is a completed rollout the firmware rule holds devices to.
type complianceRollout struct {
	id, version, query string
}

// placeholder matches the $n placeholders of a compiled query. query.Compile puts every value in Args and
// only fixed text and placeholders in SQL, so renumbering them is safe.
var placeholder = regexp.MustCompile(`\$([0-9]+)`)

// shiftPlaceholders renumbers $n to $(n+by), so that several compiled queries can share one statement.
func shiftPlaceholders(sql string, by int) string {
	return placeholder.ReplaceAllStringFunc(sql, func(m string) string {
		n, _ := strconv.Atoi(m[1:])
		return "$" + strconv.Itoa(n+by)
	})
}

// targetsPrefix starts every compiled target query; what follows it, when the query has no TOP and no ORDER
// BY, is a condition on one devices row.
const targetsPrefix = "SELECT id FROM devices WHERE "

// compliance is how the firmware rule finds the rollout that applies to a device.
type compliance struct {
	joins       string // LEFT JOINs of the target sets that cannot be tested on the row alone ("" mostly)
	version     string // SQL: the version of the newest rollout that selects d, NULL when none does
	rollout     string // SQL: that rollout's id
	args        []any  // the target queries' arguments, numbered from the statement's n+1
	versions    []string
	ids         []string
	hasRollouts bool
}

// buildCompliance turns the rollouts (newest first) into SQL over the devices row d. A target query without
// TOP or ORDER BY is a condition on the row, so it is tested in the same pass over devices — no second scan,
// no join — in a CASE whose order gives the newest rollout precedence. A query with TOP selects a set that
// depends on other rows; it is joined (LEFT JOIN on the set's ids) and tested by the join's match, in the
// same CASE. Rollouts whose query no longer compiles are left out, not fatal: the rest of the check still
// matters. n is the number of the statement's own parameters ($5 and $6 are the versions and ids arrays).
func buildCompliance(rollouts []complianceRollout, n int, opts query.Options) compliance {
	opts.Targets = true
	var c compliance
	var joins, version, rollout []string
	for _, ro := range rollouts {
		parsed, err := query.Parse(ro.query)
		if err != nil {
			continue
		}
		compiled, err := query.Compile(ro.query, opts)
		if err != nil {
			continue
		}
		k := len(c.versions) + 1
		sql := shiftPlaceholders(compiled.SQL, n+len(c.args))
		var member string
		if where, ok := strings.CutPrefix(sql, targetsPrefix); ok && parsed.Top == 0 && len(parsed.OrderBy) == 0 {
			member = "(" + where + ")"
		} else {
			// The set's column is not called id: an inlined condition may say id and mean the device's.
			alias := fmt.Sprintf("t%d", k)
			joins = append(joins, fmt.Sprintf("LEFT JOIN (SELECT t.id AS member FROM (%s) t) %s ON %s.member = d.id", sql, alias, alias))
			member = alias + ".member IS NOT NULL"
		}
		version = append(version, fmt.Sprintf("WHEN %s THEN ($5::text[])[%d]", member, k))
		rollout = append(rollout, fmt.Sprintf("WHEN %s THEN ($6::text[])[%d]", member, k))
		c.versions = append(c.versions, ro.version)
		c.ids = append(c.ids, ro.id)
		c.args = append(c.args, compiled.Args...)
	}
	if len(c.versions) == 0 {
		return compliance{version: "NULL::text", rollout: "NULL::text"}
	}
	c.hasRollouts = true
	c.joins = strings.Join(joins, "\n")
	c.version = "CASE " + strings.Join(version, " ") + " END"
	c.rollout = "CASE " + strings.Join(rollout, " ") + " END"
	return c
}

// RunHealthCheck runs one health check over the whole fleet in one transaction and records it in
// health_runs under runID (a retry with the same runID replaces the row): it finds every problem of every
// active device with set-based SQL (the rules of internal/health), opens an alert for each new problem,
// refreshes the open alerts of problems that persist (last_seen, detail), resolves open alerts whose problem
// is gone — including those of devices disabled, retired or deleted since — and returns the fleet's summary.
// The alerts are the fleet-wide rule's (health.FleetRule). Checks of one rule are serialized by an advisory
// lock; nothing is done per device in Go.
func (r *Registry) RunHealthCheck(ctx context.Context, runID string, rules health.Rules) (fleet.HealthSummary, error) {
	rules, err := fleet.PrepareHealthCheck(runID, rules)
	if err != nil {
		return fleet.HealthSummary{}, err
	}
	return r.runHealthCheck(ctx, runID, health.FleetRule, func(pgx.Tx) (health.Rules, string, error) { return rules, "", nil })
}

// RunHealthRule runs one check of a health rule (docs/architecture.md, "Health rules"): RunHealthCheck over
// the devices its target query selects now — compiled in the check's transaction, so that a dynamic group
// is resolved at every run — with its limits; the alerts it opens and resolves are its own. An unknown rule
// is fleet.ErrHealthRuleNotFound, wrapped.
func (r *Registry) RunHealthRule(ctx context.Context, runID, name string) (fleet.HealthSummary, error) {
	if runID == "" {
		return fleet.HealthSummary{}, errors.New("health check: a run id is required")
	}
	if err := fleet.ValidateHealthRuleName(name); err != nil {
		return fleet.HealthSummary{}, err
	}
	return r.runHealthCheck(ctx, runID, name, func(tx pgx.Tx) (health.Rules, string, error) {
		rule, err := loadHealthRule(ctx, tx, name, " FOR SHARE")
		if err != nil {
			return health.Rules{}, "", err
		}
		return rule.Rules.WithDefaults(), rule.Query, nil
	})
}

// runHealthCheck is one check of the rule named rule; load reads its limits and target query ("" for the
// whole fleet) in the check's transaction, after the rule's lock is taken.
func (r *Registry) runHealthCheck(ctx context.Context, runID, rule string,
	load func(tx pgx.Tx) (health.Rules, string, error)) (fleet.HealthSummary, error) {
	t0 := time.Now()
	s := fleet.HealthSummary{Problems: map[string]int64{}, Rule: rule}
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		// One lock per rule: two checks of a rule would race to open the same alerts; checks of different
		// rules touch different alerts and may run side by side.
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1, hashtext($2))", int32(healthLock), rule); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		var err error
		var text string
		if s.Rules, text, err = load(tx); err != nil {
			return err
		}
		var tgt *query.Compiled
		if text != "" {
			s.Target = text
			if tgt, err = r.targetsSQL(ctx, tx, text); err != nil {
				return fmt.Errorf("rule %s: target: %w", rule, err)
			}
		}
		// The transaction's clock: every rule and every alert time of this check is relative to it.
		if err := tx.QueryRow(ctx, "SELECT now()").Scan(&s.At); err != nil {
			return fmt.Errorf("read the clock: %w", err)
		}
		if _, s.Rollouts, err = findProblems(ctx, tx, s.Rules, s.At, tgt); err != nil {
			return err
		}
		// The resolving UPDATE's anti-join probes the findings once per open alert of the rule. Without an
		// index it can become a nested loop over the whole temporary table per alert: the planner, with no
		// statistics on the alerts just inserted, estimated one open alert of the rule where there were 49,485
		// (measured: 92 s instead of 1.3 s at a million devices). With it, either plan is fast.
		if _, err := tx.Exec(ctx, "CREATE INDEX ON health_problems (device_id, kind)"); err != nil {
			return fmt.Errorf("index problems: %w", err)
		}

		// Open new alerts and refresh the open ones in one statement: the partial unique index (one open alert
		// per rule, device and kind) is the conflict target. xmax is 0 only in a row version this statement
		// inserted, which tells opened from refreshed without a second look at the table.
		if err := tx.QueryRow(ctx, `WITH up AS (
			INSERT INTO alerts (rule, device_id, kind, detail, first_seen, last_seen)
			SELECT $2, device_id, kind, detail, $1, $1 FROM health_problems
			ON CONFLICT (rule, device_id, kind) WHERE resolved_at IS NULL
			DO UPDATE SET last_seen = EXCLUDED.last_seen, detail = EXCLUDED.detail
			RETURNING xmax = 0 AS opened)
			SELECT count(*) FILTER (WHERE opened) FROM up`, s.At, rule).Scan(&s.Opened); err != nil {
			return fmt.Errorf("open alerts: %w", err)
		}
		// The rule's open alerts without a problem resolve, those of devices that left its targets too.
		tag, err := tx.Exec(ctx, `UPDATE alerts a SET resolved_at = $1 WHERE a.resolved_at IS NULL AND a.rule = $2
			AND NOT EXISTS (SELECT 1 FROM health_problems p WHERE p.device_id = a.device_id AND p.kind = a.kind)`, s.At, rule)
		if err != nil {
			return fmt.Errorf("resolve alerts: %w", err)
		}
		s.Resolved = tag.RowsAffected()
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM alerts WHERE resolved_at IS NULL AND rule = $1", rule).Scan(&s.Open); err != nil {
			return fmt.Errorf("count open alerts: %w", err)
		}

		cond, args := targetCond(tgt, 0)
		if err := tx.QueryRow(ctx, `SELECT
			count(*) FILTER (WHERE status <> 'retired'),
			count(*) FILTER (WHERE status = 'active'),
			count(*) FILTER (WHERE status = 'disabled'),
			count(*) FILTER (WHERE status = 'retired'),
			count(*) FILTER (WHERE status <> 'retired' AND online),
			count(*) FILTER (WHERE status <> 'retired' AND NOT online)
			FROM devices d WHERE `+cond, args...).Scan(&s.Devices, &s.Active, &s.Disabled, &s.Retired, &s.Online, &s.Offline); err != nil {
			return fmt.Errorf("count devices: %w", err)
		}
		for _, k := range health.Kinds() {
			s.Problems[k] = 0
		}
		rows, err := tx.Query(ctx, "SELECT kind, count(*) FROM health_problems GROUP BY kind")
		if err != nil {
			return fmt.Errorf("count problems: %w", err)
		}
		var kind string
		var n int64
		if _, err := pgx.ForEachRow(rows, []any{&kind, &n}, func() error { s.Problems[kind] = n; return nil }); err != nil {
			return fmt.Errorf("count problems: %w", err)
		}

		s.Duration = time.Since(t0)
		summary, err := json.Marshal(s)
		if err != nil {
			return fmt.Errorf("encode summary: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO health_runs (id, rule, started_at, finished_at, summary)
			VALUES ($1, $4, $2, clock_timestamp(), $3)
			ON CONFLICT (id) DO UPDATE SET rule = EXCLUDED.rule, started_at = EXCLUDED.started_at,
			finished_at = EXCLUDED.finished_at, summary = EXCLUDED.summary`, runID, s.At, summary, rule); err != nil {
			return fmt.Errorf("record health run: %w", err)
		}
		return nil
	})
	if err != nil {
		return fleet.HealthSummary{}, fmt.Errorf("health check %s: %w", runID, err)
	}
	return s, nil
}

// targetCond is a compiled target query as a condition on the devices row d, its placeholders numbered from
// shift+1, with its arguments: the query's WHERE itself when it has no TOP or ORDER BY (tested in the same
// pass over devices, no join), else a semi-join on the set it selects. A nil target is the whole fleet.
func targetCond(tgt *query.Compiled, shift int) (string, []any) {
	if tgt == nil {
		return "true", nil
	}
	sql := shiftPlaceholders(tgt.SQL, shift)
	if where, ok := strings.CutPrefix(sql, targetsPrefix); ok && !strings.Contains(where, " ORDER BY ") && !strings.Contains(where, " LIMIT ") {
		// A TOP query compiles to ORDER BY … LIMIT, whose set depends on other rows; anything else is a
		// condition on the row.
		return "(" + where + ")", tgt.Args
	}
	return "d.id IN (SELECT t.id FROM (" + sql + ") t)", tgt.Args
}

// problemsSQL is the problem-finding statement: one pass over devices, in which each active device is tested
// against every rule once (the WHERE's OR, cheapest rules first); the few devices with a problem are then
// crossed with the five rules (a VALUES list of kind and condition) so that each rule that holds becomes a
// row, with its detail computed for those rows alone. Its parameters are $1 the offline cutoff (now -
// OfflineAfter), $2 the acknowledgement cutoff (now - AckWithin), $3 the credential horizon (now +
// ExpiringWithin), $4 now and, when a rollout applies, $5 and $6 the rollouts' versions and ids (text[])
// followed by their target queries' arguments, then those of the rule's target (a condition on d, "true"
// for the whole fleet). It inserts into the temporary table health_problems
// (createProblemsTable).
func problemsSQL(c compliance, target string) string {
	firmwareCond, firmwareDetail := "false", "NULL"
	if c.hasRollouts {
		firmwareCond = "(" + c.version + ") <> " + firmwareSQL
		firmwareDetail = `'runs ' || coalesce(nullif(` + firmwareSQL + `, ''), 'no reported version') ||
		'; rollout ' || (` + c.rollout + `) || ' installed ' || (` + c.version + `)`
	}
	return `INSERT INTO health_problems (device_id, kind, detail)
SELECT d.id, r.kind, CASE r.kind
	WHEN 'offline' THEN CASE WHEN d.last_seen IS NULL
		THEN 'never connected (created ' || ` + stampSQL("d.created_at") + ` || ')'
		ELSE 'last seen ' || ` + stampSQL("d.last_seen") + ` END
	WHEN 'unhealthy' THEN 'health.status is ' || (d.reported -> 'health' ->> 'status')
	WHEN 'desired_pending' THEN 'desired not acknowledged since ' || ` + stampSQL("coalesce(d.desired_at, d.created_at)") + ` || ': ' ||
		(SELECT string_agg(e.k, ', ' ORDER BY e.k COLLATE "C") ` + pendingKeys + `)
	WHEN 'firmware_noncompliant' THEN ` + firmwareDetail + `
	WHEN 'credential_expiring' THEN CASE WHEN d.credential_expires_at < $4 THEN 'credentials expired ' ELSE 'credentials expire ' END ||
		` + stampSQL("d.credential_expires_at") + `
	END
FROM devices d
` + c.joins + `
CROSS JOIN LATERAL (VALUES
	('offline', ` + offlineCond + `),
	('unhealthy', ` + unhealthyCond + `),
	('desired_pending', ` + pendingCond + `),
	('firmware_noncompliant', ` + firmwareCond + `),
	('credential_expiring', ` + expiringCond + `)
) r(kind, hit)
WHERE d.status = 'active' AND ` + target + `
	AND ((` + offlineCond + `) OR (` + expiringCond + `) OR (` + pendingCond + `) OR (` + unhealthyCond + `) OR (` + firmwareCond + `))
	AND r.hit`
}

// createProblemsTable holds one check's findings until its transaction ends.
const createProblemsTable = `CREATE TEMP TABLE health_problems (device_id text NOT NULL, kind text NOT NULL,
	detail text NOT NULL) ON COMMIT DROP`

// findProblems runs the problem-finding statement of a check at now in tx, which leaves the problems in the
// temporary table health_problems until the transaction ends, and returns how many it found and the ids of
// the rollouts the firmware rule held devices to.
func findProblems(ctx context.Context, tx pgx.Tx, rules health.Rules, now time.Time, tgt *query.Compiled) (int64, []string, error) {
	for _, set := range healthSettings {
		if _, err := tx.Exec(ctx, set); err != nil {
			return 0, nil, fmt.Errorf("%s: %w", set, err)
		}
	}
	rollouts, err := complianceRollouts(ctx, tx)
	if err != nil {
		return 0, nil, err
	}
	opts, err := complianceOptions(ctx, tx, rollouts)
	if err != nil {
		return 0, nil, err
	}
	c := buildCompliance(rollouts, 6, opts)
	args := []any{now.Add(-rules.OfflineAfter), now.Add(-rules.AckWithin), now.Add(rules.ExpiringWithin), now}
	if c.hasRollouts {
		// Postgres must see every parameter it is given, so these go only with the SQL that reads them.
		args = append(append(args, c.versions, c.ids), c.args...)
	}
	target, targetArgs := targetCond(tgt, len(args))
	args = append(args, targetArgs...)
	if _, err := tx.Exec(ctx, createProblemsTable); err != nil {
		return 0, nil, fmt.Errorf("create problems table: %w", err)
	}
	tag, err := tx.Exec(ctx, problemsSQL(c, target), args...)
	if err != nil {
		return 0, nil, fmt.Errorf("find problems: %w", err)
	}
	return tag.RowsAffected(), c.ids, nil
}

// FindProblems runs the health check's problem-finding statements alone, in tx, as RunHealthCheck runs them
// at now: it leaves the problems in the temporary table health_problems (device_id, kind, detail) until the
// transaction ends and returns how many it found. Nothing else is written. It is for benchmarks that time the
// bare SQL next to the whole check.
func (r *Registry) FindProblems(ctx context.Context, tx pgx.Tx, rules health.Rules, now time.Time) (int64, error) {
	rules = rules.WithDefaults()
	if err := rules.Validate(); err != nil {
		return 0, err
	}
	return r.FindRuleProblems(ctx, tx, rules, now, "")
}

// FindRuleProblems is FindProblems over the devices a target query selects, as a health rule's check finds
// them ("" for the whole fleet).
func (r *Registry) FindRuleProblems(ctx context.Context, tx pgx.Tx, rules health.Rules, now time.Time, target string) (int64, error) {
	rules = rules.WithDefaults()
	if err := rules.Validate(); err != nil {
		return 0, err
	}
	var tgt *query.Compiled
	if target != "" {
		var err error
		if tgt, err = r.targetsSQL(ctx, tx, target); err != nil {
			return 0, err
		}
	}
	n, _, err := findProblems(ctx, tx, rules, now, tgt)
	return n, err
}

// complianceOptions compiles the rollouts' queries as they were compiled when the rollouts were created:
// with the groups they name and the scheme in force.
func complianceOptions(ctx context.Context, tx pgx.Tx, rollouts []complianceRollout) (query.Options, error) {
	var opts query.Options
	var names []string
	for _, ro := range rollouts {
		if parsed, err := query.Parse(ro.query); err == nil {
			names = append(names, query.GroupNames(parsed.Where)...)
		}
	}
	var err error
	if opts.Groups, err = loadGroupDefs(ctx, tx, names); err != nil {
		return opts, err
	}
	s, err := activeScheme(ctx, tx)
	if err != nil {
		return opts, err
	}
	if s != nil {
		opts.Vocabulary = s
	}
	return opts, nil
}

// complianceRollouts returns the newest completed rollout per distinct query, newest first, at most
// maxComplianceRollouts: an older rollout with the same query selects the same devices and is superseded.
func complianceRollouts(ctx context.Context, tx pgx.Tx) ([]complianceRollout, error) {
	rows, err := tx.Query(ctx, `SELECT id, version, query FROM (
			SELECT DISTINCT ON (query) id, version, query, coalesce(finished_at, created_at) AS at
			FROM rollouts WHERE state = 'completed'
			ORDER BY query, coalesce(finished_at, created_at) DESC, id DESC) r
		ORDER BY at DESC, id DESC LIMIT $1`, maxComplianceRollouts)
	if err != nil {
		return nil, fmt.Errorf("load completed rollouts: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (complianceRollout, error) {
		var ro complianceRollout
		return ro, row.Scan(&ro.id, &ro.version, &ro.query)
	})
	if err != nil {
		return nil, fmt.Errorf("load completed rollouts: %w", err)
	}
	return out, nil
}

// alertColumns are the columns scanAlert reads, in its order.
const alertColumns = "id, rule, device_id, kind, detail, first_seen, last_seen, resolved_at, acked_at, acked_by"

func scanAlert(row pgx.Row) (Alert, error) {
	var a Alert
	err := row.Scan(&a.ID, &a.Rule, &a.DeviceID, &a.Kind, &a.Detail, &a.FirstSeen, &a.LastSeen, &a.ResolvedAt, &a.AckedAt, &a.AckedBy)
	return a, err
}

// ListAlerts returns alerts, newest first. Open selects those not resolved yet (acknowledged or not).
func (r *Registry) ListAlerts(ctx context.Context, f AlertFilter) ([]Alert, error) {
	var where []string
	var args []any
	if f.Open {
		where = append(where, "resolved_at IS NULL")
	}
	if f.DeviceID != "" {
		args = append(args, f.DeviceID)
		where = append(where, "device_id = $"+strconv.Itoa(len(args)))
	}
	if f.Rule != "" {
		args = append(args, f.Rule)
		where = append(where, "rule = $"+strconv.Itoa(len(args)))
	}
	sql := "SELECT " + alertColumns + " FROM alerts"
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	sql += " ORDER BY id DESC"
	if f.Limit > 0 {
		args = append(args, f.Limit)
		sql += " LIMIT $" + strconv.Itoa(len(args))
	}
	rows, err := r.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("list alerts: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Alert, error) { return scanAlert(row) })
	if err != nil {
		return nil, fmt.Errorf("list alerts: %w", err)
	}
	return out, nil
}

// AckAlert records that by has seen an alert and returns it. The first acknowledgement is kept (a second one
// changes nothing, so "who saw it first" survives); acknowledging a resolved alert is allowed — it records
// that someone looked at a problem that has gone away — and the caller can tell from ResolvedAt. An unknown
// id is ErrNotFound, wrapped.
func (r *Registry) AckAlert(ctx context.Context, id int64, by string) (Alert, error) {
	// In SET, acked_at on the right-hand side is the old value, so acked_by changes only with the first ack.
	a, err := scanAlert(r.pool.QueryRow(ctx, `UPDATE alerts SET acked_at = coalesce(acked_at, now()),
		acked_by = CASE WHEN acked_at IS NULL THEN $2 ELSE acked_by END
		WHERE id = $1 RETURNING `+alertColumns, id, by))
	if isNoRows(err) {
		return Alert{}, fmt.Errorf("alert %d: %w", id, fleet.ErrNotFound)
	}
	if err != nil {
		return Alert{}, fmt.Errorf("ack alert %d: %w", id, err)
	}
	return a, nil
}

// HealthRuns returns the latest health checks of every rule, newest first, at most limit (<= 0: 10).
func (r *Registry) HealthRuns(ctx context.Context, limit int) ([]HealthRun, error) {
	return r.HealthRunsOf(ctx, "", limit)
}

// HealthRunsOf returns the latest checks of one health rule ("" for every rule), newest first, at most
// limit (<= 0: 10).
func (r *Registry) HealthRunsOf(ctx context.Context, rule string, limit int) ([]HealthRun, error) {
	if limit <= 0 {
		limit = 10
	}
	rows, err := r.pool.Query(ctx, `SELECT id, rule, started_at, finished_at, summary FROM health_runs
		WHERE $2 = '' OR rule = $2
		ORDER BY started_at DESC, id DESC LIMIT $1`, limit, rule)
	if err != nil {
		return nil, fmt.Errorf("read health runs: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanHealthRun)
	if err != nil {
		return nil, fmt.Errorf("read health runs: %w", err)
	}
	return out, nil
}

// scanHealthRun reads a health_runs row (id, rule, started_at, finished_at, summary).
func scanHealthRun(row pgx.CollectableRow) (HealthRun, error) {
	var h HealthRun
	var summary []byte
	if err := row.Scan(&h.ID, &h.Rule, &h.StartedAt, &h.FinishedAt, &summary); err != nil {
		return h, err
	}
	if err := json.Unmarshal(summary, &h.Summary); err != nil {
		return h, fmt.Errorf("health run %s: summary: %w", h.ID, err)
	}
	return h, nil
}
