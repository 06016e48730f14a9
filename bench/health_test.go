package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/health"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/registry/registrytest"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/workflows"
)

// healthDevices is the fleet BenchmarkHealthCheck1M checks (FLEETFLOW_BENCH_HEALTH_DEVICES overrides it).
var healthDevices = config.EnvInt("FLEETFLOW_BENCH_HEALTH_DEVICES", 1_000_000)

// healthFleetSQL provisions the benchmark fleet in one statement. Every rule has hits: ~2% of the devices
// are offline beyond the limit (and 2% more disconnected within it), 1% report a failing health status, 1%
// have a desired change they have not acknowledged for an hour (1% more have acknowledged theirs), 0.5% run
// the wrong firmware for the rollouts below, 0.5% have credentials expiring within days (0.5% more within
// months); 2% are disabled and ~1% retired.
const healthFleetSQL = `INSERT INTO devices (id, status, online, last_seen, created_at, desired_at, credential_expires_at,
	tags, desired, reported)
SELECT 'hc-' || lpad(i::text, 7, '0'),
	CASE WHEN i % 50 = 0 THEN 'disabled' WHEN i % 97 = 0 THEN 'retired' ELSE 'active' END,
	i % 50 NOT IN (1, 2),
	CASE i % 50 WHEN 1 THEN now() - interval '1 hour' WHEN 2 THEN now() - interval '2 minutes' ELSE now() - interval '30 seconds' END,
	now() - interval '30 days',
	CASE WHEN i % 100 IN (5, 6) THEN now() - interval '1 hour' END,
	CASE i % 200 WHEN 7 THEN now() + interval '3 days' WHEN 8 THEN now() + interval '60 days' END,
	jsonb_build_object('region', (ARRAY['eu', 'us', 'apac'])[i % 3 + 1], 'model', 'm' || (i % 5)),
	CASE i % 100 WHEN 5 THEN '{"telemetryInterval": 60}'::jsonb WHEN 6 THEN '{"telemetryInterval": 30}'::jsonb ELSE '{}'::jsonb END,
	jsonb_build_object(
		'health', jsonb_build_object('status', CASE WHEN i % 100 = 3 THEN 'failing' ELSE 'ok' END),
		'firmware', jsonb_build_object('version', CASE WHEN i % 200 = 4 THEN '1.0.0' ELSE '2.0.0' END),
		'telemetryInterval', 30)
FROM generate_series(0, $1::int - 1) i`

// healthRolloutsSQL records two completed rollouts of 2.0.0: a fleet-wide one and, newer, one over model m4
// (a fifth of the fleet), so the firmware rule joins two target sets, one of them the whole fleet.
const healthRolloutsSQL = `
INSERT INTO firmware (version, url, sha256) VALUES ('2.0.0', 'http://fw/2.0.0', repeat('c', 64));
INSERT INTO rollouts (id, version, query, spec, state, total, finished_at) VALUES
	('rollout-2.0.0-1', '2.0.0', 'SELECT * FROM devices', '{}', 'completed', 0, now() - interval '2 days'),
	('rollout-2.0.0-2', '2.0.0', 'SELECT * FROM devices WHERE tags.model = ''m4''', '{}', 'completed', 0, now() - interval '1 day');`

// BenchmarkHealthCheck1M provisions a fleet with direct SQL and times the FleetHealthCheck workflow over it
// (started as the schedule starts it, with a worker in this process running the real activity), first when
// every alert opens and then in the steady state when they are all refreshed, next to the problem-finding
// statement written by hand for this benchmark (handHealthSQL), next to the check's own problem-finding
// statement alone, and next to a bare counting pass over the devices table.
func BenchmarkHealthCheck1M(b *testing.B) {
	ctx := context.Background()
	be := openBackend(b, testenv.StartPostgres(b), "bench-health")
	reg, pool := be.reg, be.reg.Pool()
	w := worker.New(be.tc, be.queue, worker.Options{})
	w.RegisterWorkflow(workflows.FleetHealthCheck)
	w.RegisterActivity(&activities.Activities{Provision: reg, Monitor: reg, HealthRules: reg})
	if err := w.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(w.Stop)

	t0 := time.Now()
	if _, err := pool.Exec(ctx, healthFleetSQL, healthDevices); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, healthRolloutsSQL); err != nil {
		b.Fatal(err)
	}
	for _, q := range []string{"VACUUM ANALYZE devices", "CHECKPOINT"} {
		if _, err := pool.Exec(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	fmt.Printf("fleet of %d devices provisioned with direct SQL in %s\n", healthDevices, time.Since(t0).Round(time.Millisecond))

	rules := health.DefaultRules()
	b.ResetTimer()
	handBefore, found, _, err := handProblems(ctx, pool, rules, false)
	if err != nil {
		b.Fatal(err)
	}
	own, ownFound, _, err := productProblems(ctx, reg, rules, false)
	if err != nil {
		b.Fatal(err)
	}
	first, firstRes := timeHealthCheck(b, ctx, be.tc, be.queue, "first", workflows.HealthCheckInput{})
	steady, steadyRes := timeHealthCheck(b, ctx, be.tc, be.queue, "steady", workflows.HealthCheckInput{})
	handAfter, _, _, err := handProblems(ctx, pool, rules, false)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	hand := min(handBefore, handAfter)
	scan := bareScan(b, ctx, reg)
	ruleTimes := benchHealthRules(b, ctx, be, steadyRes)

	problems := func(r workflows.HealthCheckResult) int64 {
		p := r.Problems
		return p.Offline + p.Unhealthy + p.DesiredPending + p.FirmwareNoncompliant + p.CredentialExpiring
	}
	if ownFound != found || problems(firstRes) != found || firstRes.Opened != found || steadyRes.Opened != 0 || steadyRes.Open != found {
		b.Fatalf("the check disagrees with the hand-written SQL: %d problems by hand, %d by the check's statement; first run %+v; steady run %+v",
			found, ownFound, firstRes, steadyRes)
	}
	for _, n := range []int64{firstRes.Problems.Offline, firstRes.Problems.Unhealthy, firstRes.Problems.DesiredPending,
		firstRes.Problems.FirmwareNoncompliant, firstRes.Problems.CredentialExpiring} {
		if n == 0 {
			b.Fatalf("a rule has no hits: %+v", firstRes.Problems)
		}
	}
	fmt.Printf("health check over %d devices: %s\n", healthDevices, firstRes.Summary())
	report(b, "bare pass over devices (count of the offline rule's hits)", scan.Seconds(), "s-bare-scan")
	report(b, "hand-written problem-finding SQL, the yardstick (faster of before/after)", hand.Seconds(), "s-hand-sql")
	report(b, "  the check's own problem-finding statement alone (registry.FindProblems)", own.Seconds(), "s-own-sql")
	report(b, "FleetHealthCheck, first run (every alert opens), start to result", first.Seconds(), "s-check-first")
	report(b, "  of which the registry transaction", firstRes.Duration.Seconds(), "s-tx-first")
	report(b, "FleetHealthCheck, steady state (alerts refreshed), start to result", steady.Seconds(), "s-check-steady")
	report(b, "  of which the registry transaction", steadyRes.Duration.Seconds(), "s-tx-steady")
	report(b, "ratio first run / hand SQL", first.Seconds()/hand.Seconds(), "x-first")
	report(b, "ratio steady run / hand SQL", steady.Seconds()/hand.Seconds(), "x-steady")
	report(b, "problems found (= alerts open)", float64(found), "problems")
	for _, rt := range ruleTimes {
		report(b, rt.label, rt.took.Seconds(), rt.unit)
	}
	if worst := max(first, steady); worst > 5*time.Second {
		fmt.Printf("    MISSED the 5 s target: %s\n", worst.Round(time.Millisecond))
	}
}

// ruleTime is one measurement of benchHealthRules.
type ruleTime struct {
	label, unit string
	took        time.Duration
}

// benchHealthRules times health rules (docs/architecture.md, "Health rules") over the benchmark fleet, after
// the fleet-wide check: one on a dynamic group (region eu, a third of the fleet: its condition joins the
// check's one pass over devices) and one on a static group of 1% of the fleet (a semi-join on its members),
// each with the default limits, first run and steady state. Each rule must find exactly the problems the
// fleet-wide check found on its members (fleetRes is the fleet-wide steady result).
func benchHealthRules(b *testing.B, ctx context.Context, be *backend, fleetRes workflows.HealthCheckResult) []ruleTime {
	b.Helper()
	reg, pool := be.reg, be.reg.Pool()
	if err := reg.CreateGroup(ctx, "bench-eu", "SELECT * FROM devices WHERE tags.region = 'eu'"); err != nil {
		b.Fatal(err)
	}
	if err := reg.CreateGroup(ctx, "bench-static", ""); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO device_group_members (group_name, device_id)
		SELECT 'bench-static', id FROM devices d WHERE `+groupCondSQL("bench-static")); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "ANALYZE device_group_members"); err != nil {
		b.Fatal(err)
	}
	var out []ruleTime
	for _, r := range []struct{ name, group, label string }{
		{"bench-eu", "bench-eu", "dynamic group (a third of the fleet)"},
		{"bench-static", "bench-static", "static group (1% of the fleet)"},
	} {
		if err := reg.SaveHealthRule(ctx, fleetHealthRule(r.name, r.group)); err != nil {
			b.Fatal(err)
		}
		// What the fleet-wide check found on the group's members: the rule must find the same.
		var want int64
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM alerts a WHERE a.rule = 'fleet' AND a.resolved_at IS NULL
			AND a.device_id IN (SELECT id FROM devices d WHERE `+groupCondSQL(r.group)+`)`).Scan(&want); err != nil {
			b.Fatal(err)
		}
		first, firstRes := timeHealthCheck(b, ctx, be.tc, be.queue, r.name+"-first", workflows.HealthCheckInput{Rule: r.name})
		steady, steadyRes := timeHealthCheck(b, ctx, be.tc, be.queue, r.name+"-steady", workflows.HealthCheckInput{Rule: r.name})
		if firstRes.Opened != want || steadyRes.Opened != 0 || steadyRes.Open != want || firstRes.Devices >= fleetRes.Devices {
			b.Fatalf("rule %s disagrees with the fleet-wide check on its members: want %d problems; first %+v; steady %+v",
				r.name, want, firstRes, steadyRes)
		}
		fmt.Printf("health rule %s over %d devices: %s\n", r.name, firstRes.Devices, firstRes.Summary())
		out = append(out,
			ruleTime{"health rule on a " + r.label + ", first run, start to result", "s-rule-" + r.name + "-first", first},
			ruleTime{"  of which the registry transaction", "s-rule-" + r.name + "-tx-first", firstRes.Duration},
			ruleTime{"health rule on a " + r.label + ", steady state, start to result", "s-rule-" + r.name + "-steady", steady},
			ruleTime{"  of which the registry transaction", "s-rule-" + r.name + "-tx-steady", steadyRes.Duration})
	}
	return out
}

// groupCondSQL is the benchmark groups' membership as a condition on devices d, written by hand.
func groupCondSQL(group string) string {
	if group == "bench-eu" {
		return `d.tags @> '{"region": "eu"}'`
	}
	// Every 101st device: spread over the fleet's cycles (of 50, 97, 100 and 200), so every rule has hits.
	return `substr(d.id, 4)::int % 101 = 0`
}

// fleetHealthRule is a rule on a group with the default limits, checked every minute.
func fleetHealthRule(name, group string) fleet.HealthRule {
	return fleet.HealthRule{Name: name, Query: fleet.GroupQuery(group), Group: group, Rules: health.DefaultRules(), Every: time.Minute}
}

// timeHealthCheck starts FleetHealthCheck as the schedule does and waits for its result.
func timeHealthCheck(b *testing.B, ctx context.Context, tc client.Client, queue, label string,
	in workflows.HealthCheckInput) (time.Duration, workflows.HealthCheckResult) {
	b.Helper()
	id := fmt.Sprintf("%s-bench-%s-%d", workflows.HealthCheckIDPrefix, label, time.Now().UnixNano())
	t0 := time.Now()
	run, err := tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: queue}, workflows.FleetHealthCheck, in)
	if err != nil {
		b.Fatal(err)
	}
	var res workflows.HealthCheckResult
	if err := run.Get(ctx, &res); err != nil {
		b.Fatal(err)
	}
	return time.Since(t0), res
}

// handHealthSQL is the health check's yardstick: the problems of the benchmark fleet (healthFleetSQL with
// healthRolloutsSQL) found by a statement written by hand for this benchmark from the rules' definitions in
// internal/health, sharing no SQL with the registry's. It knows the benchmark's two completed rollouts
// instead of compiling their queries: the newer one (rollout-2.0.0-2, model m4) and the fleet-wide one
// (rollout-2.0.0-1) both install 2.0.0. It makes one pass that keeps the active devices breaking any rule and
// expands each into a row per broken rule with its detail text, into the temporary table hand_problems, as
// the check materializes its findings. $1 is the offline cutoff, $2 the acknowledgement cutoff, $3 the
// credential horizon, $4 now.
const handHealthSQL = `INSERT INTO hand_problems (device_id, kind, detail)
WITH hit AS (
	SELECT d.id, d.online, d.last_seen, d.created_at, d.desired, d.reported, d.credential_expires_at,
		coalesce(d.desired_at, d.created_at) AS asked,
		d.reported #>> '{health,status}' AS status,
		coalesce(d.reported #>> '{firmware,version}', '') AS runs,
		CASE WHEN d.tags @> '{"model": "m4"}' THEN 'rollout-2.0.0-2' ELSE 'rollout-2.0.0-1' END AS rollout,
		'2.0.0' AS installed,
		EXISTS (SELECT 1 FROM jsonb_object_keys(d.desired) k WHERE CASE WHEN k = 'firmware'
			THEN d.desired #>> '{firmware,version}' IS DISTINCT FROM d.reported #>> '{firmware,version}'
			ELSE d.desired -> k IS DISTINCT FROM d.reported -> k END) AS unacked
	FROM devices d
	WHERE d.status = 'active' AND (
		(NOT d.online AND coalesce(d.last_seen, d.created_at) < $1)
		OR lower(d.reported #>> '{health,status}') IN ('failing', 'unhealthy', 'critical')
		OR (coalesce(d.desired_at, d.created_at) < $2 AND d.desired <> '{}')
		OR coalesce(d.reported #>> '{firmware,version}', '') <> '2.0.0'
		OR d.credential_expires_at < $3))
SELECT h.id, p.kind, p.detail FROM hit h CROSS JOIN LATERAL (
	SELECT 'offline', CASE WHEN h.last_seen IS NULL THEN 'never connected (created ' || h.created_at || ')'
		ELSE 'last seen ' || h.last_seen END
		WHERE NOT h.online AND coalesce(h.last_seen, h.created_at) < $1
	UNION ALL SELECT 'unhealthy', 'health.status is ' || h.status
		WHERE lower(h.status) IN ('failing', 'unhealthy', 'critical')
	UNION ALL SELECT 'desired_pending', 'desired not acknowledged since ' || h.asked
		WHERE h.asked < $2 AND h.unacked
	UNION ALL SELECT 'firmware_noncompliant', 'runs ' || coalesce(nullif(h.runs, ''), 'no reported version') ||
		'; rollout ' || h.rollout || ' installed ' || h.installed
		WHERE h.runs <> h.installed
	UNION ALL SELECT 'credential_expiring', CASE WHEN h.credential_expires_at < $4 THEN 'credentials expired '
		ELSE 'credentials expire ' END || h.credential_expires_at
		WHERE h.credential_expires_at < $3) p(kind, detail)`

// handProblemsTable holds handHealthSQL's findings until the transaction ends.
const handProblemsTable = `CREATE TEMP TABLE hand_problems (device_id text NOT NULL, kind text NOT NULL, detail text NOT NULL) ON COMMIT DROP`

// problemSet is a check's findings as "device kind" keys, to compare two ways of finding them.
type problemSet map[string]bool

// inTx runs fn in a transaction it rolls back, with the session settings the health check uses for its own
// (jit off, 64 MB of work_mem: configuration, not SQL of the check's), so that both sides run alike.
func inTx(ctx context.Context, pool *pgxpool.Pool, fn func(tx pgx.Tx, now time.Time) error) error {
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for _, set := range []string{"SET LOCAL jit = off", "SET LOCAL work_mem = '64MB'"} {
			if _, err := tx.Exec(ctx, set); err != nil {
				return err
			}
		}
		var now time.Time
		if err := tx.QueryRow(ctx, "SELECT now()").Scan(&now); err != nil {
			return err
		}
		if err := fn(tx, now); err != nil {
			return err
		}
		return errRollback
	})
	if errors.Is(err, errRollback) {
		return nil
	}
	return err
}

// readProblems reads the (device, kind) pairs of a temporary findings table.
func readProblems(ctx context.Context, tx pgx.Tx, table string) (problemSet, error) {
	rows, err := tx.Query(ctx, "SELECT device_id || ' ' || kind FROM "+table)
	if err != nil {
		return nil, err
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	set := problemSet{}
	for _, k := range keys {
		set[k] = true
	}
	return set, nil
}

// handProblems runs handHealthSQL in a transaction it rolls back and returns how long the statement took,
// how many problems it found and, with keep, which.
func handProblems(ctx context.Context, pool *pgxpool.Pool, rules health.Rules, keep bool) (time.Duration, int64, problemSet, error) {
	var took time.Duration
	var n int64
	var set problemSet
	err := inTx(ctx, pool, func(tx pgx.Tx, now time.Time) error {
		t0 := time.Now()
		if _, err := tx.Exec(ctx, handProblemsTable); err != nil {
			return fmt.Errorf("create hand_problems: %w", err)
		}
		tag, err := tx.Exec(ctx, handHealthSQL, now.Add(-rules.OfflineAfter), now.Add(-rules.AckWithin),
			now.Add(rules.ExpiringWithin), now)
		took = time.Since(t0)
		if err != nil {
			return fmt.Errorf("hand-written health SQL: %w", err)
		}
		n = tag.RowsAffected()
		if keep {
			set, err = readProblems(ctx, tx, "hand_problems")
		}
		return err
	})
	return took, n, set, err
}

// productProblems runs the check's own problem-finding statements alone (registry.FindProblems: its
// settings, temporary table and statement, nothing of the alert bookkeeping) in a transaction it rolls
// back, and returns how long they took, how many problems they found and, with keep, which.
func productProblems(ctx context.Context, reg *registry.Registry, rules health.Rules, keep bool) (time.Duration, int64, problemSet, error) {
	var took time.Duration
	var n int64
	var set problemSet
	err := inTx(ctx, reg.Pool(), func(tx pgx.Tx, now time.Time) error {
		t0 := time.Now()
		var err error
		if n, err = reg.FindProblems(ctx, tx, rules, now); err != nil {
			return err
		}
		took = time.Since(t0)
		if keep {
			set, err = readProblems(ctx, tx, "health_problems")
		}
		return err
	})
	return took, n, set, err
}

var errRollback = errors.New("rollback")

// bareScan times the cheapest pass over the fleet that still reads a row's columns: the floor of any
// fleet-wide check.
func bareScan(b *testing.B, ctx context.Context, reg *registry.Registry) time.Duration {
	b.Helper()
	t0 := time.Now()
	var n int64
	if err := reg.Pool().QueryRow(ctx, `SELECT count(*) FROM devices WHERE status = 'active' AND NOT online
		AND coalesce(last_seen, created_at) < now() - interval '10 minutes'`).Scan(&n); err != nil {
		b.Fatal(err)
	}
	return time.Since(t0)
}

// TestHealthYardstickAgrees holds the health benchmark's yardstick to the product on a small fleet seeded as
// the benchmark seeds its million: the hand-written statement and the check's own statement find exactly the
// same problems, device by device and kind by kind, and every rule has hits.
func TestHealthYardstickAgrees(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.Open(t)
	pool := reg.Pool()
	if _, err := pool.Exec(ctx, healthFleetSQL, 20_000); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, healthRolloutsSQL); err != nil {
		t.Fatal(err)
	}
	rules := health.DefaultRules()
	_, nHand, hand, err := handProblems(ctx, pool, rules, true)
	if err != nil {
		t.Fatal(err)
	}
	_, nOwn, own, err := productProblems(ctx, reg, rules, true)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for k := range own {
		kinds[k[strings.IndexByte(k, ' ')+1:]]++
		if !hand[k] {
			t.Errorf("the check finds %q, the hand-written SQL does not", k)
		}
	}
	for k := range hand {
		if !own[k] {
			t.Errorf("the hand-written SQL finds %q, the check does not", k)
		}
	}
	if nHand != int64(len(hand)) || nOwn != int64(len(own)) {
		t.Errorf("counts %d (hand) and %d (check) disagree with the rows read back: %d and %d", nHand, nOwn, len(hand), len(own))
	}
	for _, k := range health.Kinds() {
		if kinds[k] == 0 {
			t.Errorf("no %s problem in the seeded fleet: %v", k, kinds)
		}
	}
	t.Logf("%d problems: %v", len(own), kinds)
}
