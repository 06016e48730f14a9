package registry_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/health"
	"github.com/fleetflow/fleetflow/internal/registry"
)

// healthFleetSQL builds a fleet of $1 devices whose states cycle with different periods, so that every rule
// has hits, misses and near misses, alone and in combination: statuses, connection, last_seen (NULL or 0..24
// minutes ago), creation (a day or a minute ago), health statuses in several cases, firmware versions,
// desired documents (plain keys, the firmware key, nothing) acknowledged or not, desired_at (NULL or 0..21
// minutes ago) and credential expiry (none, past, near, far). Tags give the rollout queries their sets.
const healthFleetSQL = `INSERT INTO devices (id, status, online, last_seen, created_at, desired_at, credential_expires_at,
	tags, desired, reported)
SELECT 'h-' || lpad(i::text, 4, '0'),
	CASE WHEN i % 17 = 0 THEN 'disabled' WHEN i % 19 = 0 THEN 'retired' ELSE 'active' END,
	i % 3 = 0,
	CASE WHEN i % 13 = 0 THEN NULL ELSE now() - (i % 7) * interval '4 minutes' END,
	CASE WHEN i % 11 = 0 THEN now() - interval '1 minute' ELSE now() - interval '1 day' END,
	CASE WHEN i % 4 = 0 THEN NULL ELSE now() - (i % 8) * interval '3 minutes' END,
	CASE WHEN i % 9 = 0 THEN now() + (i % 20 - 5) * interval '1 day' END,
	jsonb_build_object('region', CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END, 'site', 's' || (i % 4)),
	CASE i % 5
		WHEN 0 THEN '{"telemetryInterval": 10}'::jsonb
		WHEN 1 THEN '{"telemetryInterval": 20, "mode": "eco"}'::jsonb
		WHEN 2 THEN '{"firmware": {"version": "2.0.0", "url": "http://fw/2.0.0", "jobId": "j1"}}'::jsonb
		ELSE '{}'::jsonb END,
	CASE WHEN i % 23 = 0 THEN '{}'::jsonb ELSE jsonb_build_object(
		'health', jsonb_build_object('status', (ARRAY['ok', 'failing', 'OK', 'Critical', 'unhealthy', 'degraded'])[i % 6 + 1]),
		'firmware', jsonb_build_object('version', (ARRAY['1.0.0', '2.0.0', '0.9.0'])[i % 3 + 1]),
		'telemetryInterval', (i % 4) * 10,
		'mode', CASE WHEN i % 7 < 3 THEN 'eco' ELSE 'turbo' END) END
FROM generate_series(1, $1) i`

// healthRolloutsSQL records completed and other rollouts, newest first: ro-one (one device, by id), ro-top
// (the first 7 devices of site s1 — a TOP query, which cannot be tested on the row alone and is joined),
// ro-site0 (s0), which supersedes ro-old (same query) and, on s0 devices, ro-eu; the aborted one does not
// count.
const healthRolloutsSQL = `
INSERT INTO firmware (version, url, sha256) VALUES
	('0.9.0', 'http://fw/0.9.0', repeat('a', 64)), ('1.0.0', 'http://fw/1.0.0', repeat('b', 64)), ('2.0.0', 'http://fw/2.0.0', repeat('c', 64));
INSERT INTO rollouts (id, version, query, spec, state, finished_at) VALUES
	('ro-old', '0.9.0', 'SELECT * FROM devices WHERE tags.site = ''s0''', '{}', 'completed', now() - interval '3 days'),
	('ro-eu', '1.0.0', 'SELECT * FROM devices WHERE tags.region = ''eu''', '{}', 'completed', now() - interval '2 days'),
	('ro-site0', '2.0.0', 'SELECT * FROM devices WHERE tags.site = ''s0''', '{}', 'completed', now() - interval '1 day'),
	('ro-top', '0.9.0', 'SELECT TOP 7 * FROM devices WHERE tags.site = ''s1'' ORDER BY deviceId', '{}', 'completed', now() - interval '12 hours'),
	('ro-one', '0.9.0', 'SELECT * FROM devices WHERE deviceId = ''h-0004''', '{}', 'completed', now() - interval '6 hours'),
	('ro-aborted', '0.9.0', 'SELECT * FROM devices', '{}', 'aborted', now());`

// compliance is what the rollouts above make of a device, worked out by hand; top7 is the set of ro-top.
func compliance(id string, tags map[string]any, top7 map[string]bool) (version, rollout string) {
	switch {
	case id == "h-0004":
		return "0.9.0", "ro-one"
	case top7[id]:
		return "0.9.0", "ro-top"
	case tags["site"] == "s0":
		return "2.0.0", "ro-site0"
	case tags["region"] == "eu":
		return "1.0.0", "ro-eu"
	}
	return "", ""
}

// loadHealthDevices reads every device as the rules see it.
func loadHealthDevices(t *testing.T, reg *registry.Registry) []health.Device {
	t.Helper()
	rows, err := reg.Pool().Query(context.Background(), `SELECT id, status, online, last_seen, created_at, desired_at,
		credential_expires_at, tags, desired, reported FROM devices ORDER BY id`)
	require.NoError(t, err)
	defer rows.Close()
	var out []health.Device
	tags := map[string]map[string]any{}
	for rows.Next() {
		var d health.Device
		var lastSeen, desiredAt, expires *time.Time
		var tagDoc, desired, reported []byte
		require.NoError(t, rows.Scan(&d.ID, &d.Status, &d.Online, &lastSeen, &d.CreatedAt, &desiredAt, &expires, &tagDoc, &desired, &reported))
		for _, p := range []struct {
			src *time.Time
			dst *time.Time
		}{{lastSeen, &d.LastSeen}, {desiredAt, &d.DesiredAt}, {expires, &d.CredentialExpiresAt}} {
			if p.src != nil {
				*p.dst = *p.src
			}
		}
		var tagMap map[string]any
		require.NoError(t, json.Unmarshal(tagDoc, &tagMap))
		require.NoError(t, json.Unmarshal(desired, &d.Desired))
		require.NoError(t, json.Unmarshal(reported, &d.Reported))
		tags[d.ID] = tagMap
		out = append(out, d)
	}
	require.NoError(t, rows.Err())
	// ro-top's set: TOP 7 by id of the s1 devices a query sees (retired ones are hidden from queries).
	top7 := map[string]bool{}
	for _, d := range out {
		if len(top7) < 7 && tags[d.ID]["site"] == "s1" && d.Status != health.StatusRetired {
			top7[d.ID] = true
		}
	}
	for i := range out {
		out[i].CompliantVersion, out[i].CompliantRollout = compliance(out[i].ID, tags[out[i].ID], top7)
	}
	return out
}

// finding is one (device, kind, detail), comparable.
type finding struct{ device, kind, detail string }

func expectedFindings(devs []health.Device, rules health.Rules, now time.Time) []finding {
	var out []finding
	for _, d := range devs {
		for _, p := range health.Evaluate(d, rules, now) {
			out = append(out, finding{d.ID, p.Kind, p.Detail})
		}
	}
	sortFindings(out)
	return out
}

func sortFindings(f []finding) {
	sort.Slice(f, func(i, j int) bool {
		if f[i].device != f[j].device {
			return f[i].device < f[j].device
		}
		return f[i].kind < f[j].kind
	})
}

// openFindings reads the open alerts as findings.
func openFindings(t *testing.T, reg *registry.Registry) []finding {
	t.Helper()
	alerts, err := reg.ListAlerts(context.Background(), registry.AlertFilter{Open: true})
	require.NoError(t, err)
	out := make([]finding, len(alerts))
	for i, a := range alerts {
		out[i] = finding{a.DeviceID, string(a.Kind), a.Detail}
	}
	sortFindings(out)
	return out
}

func countKinds(f []finding) map[string]int64 {
	m := map[string]int64{}
	for _, k := range health.Kinds() {
		m[k] = 0
	}
	for _, x := range f {
		m[x.kind]++
	}
	return m
}

func TestHealthCheckSQLAgreesWithRules(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	const n = 600
	_, err := reg.Pool().Exec(ctx, healthFleetSQL, n)
	require.NoError(t, err)
	_, err = reg.Pool().Exec(ctx, healthRolloutsSQL)
	require.NoError(t, err)

	rules := health.DefaultRules()
	s, err := reg.RunHealthCheck(ctx, "hc-1", rules)
	require.NoError(t, err)
	devs := loadHealthDevices(t, reg)
	want := expectedFindings(devs, rules, s.At)

	// Every rule has hits, and disabled and retired devices none.
	kinds := countKinds(want)
	for _, k := range health.Kinds() {
		require.Greater(t, kinds[k], int64(10), "the generated fleet has too few %s problems", k)
	}
	got := openFindings(t, reg)
	require.Equal(t, want, got, "the SQL's alerts differ from health.Evaluate")
	require.Equal(t, kinds, s.Problems)
	require.Equal(t, int64(len(want)), s.Opened)
	require.Equal(t, int64(len(want)), s.Open)
	require.Zero(t, s.Resolved)
	require.Equal(t, []string{"ro-one", "ro-top", "ro-site0", "ro-eu"}, s.Rollouts, "newest per query, newest first; the aborted one ignored")
	var byTop, byOne int
	for _, f := range want {
		if f.kind == health.KindFirmwareNoncompliant && strings.Contains(f.detail, "rollout ro-top ") {
			byTop++
		}
		if f.kind == health.KindFirmwareNoncompliant && strings.Contains(f.detail, "rollout ro-one ") {
			byOne++
		}
	}
	require.Positive(t, byTop, "the TOP rollout decides some devices")
	require.Equal(t, 1, byOne, "the one-device rollout decides h-0004 (which ro-site0 would find compliant)")

	var active, disabled, retired, online, offline int64
	for _, d := range devs {
		switch d.Status {
		case health.StatusActive:
			active++
		case health.StatusDisabled:
			disabled++
		case health.StatusRetired:
			retired++
		}
		if d.Status != health.StatusRetired {
			if d.Online {
				online++
			} else {
				offline++
			}
		}
	}
	require.Equal(t, fleet.HealthSummary{Rule: health.FleetRule, At: s.At, Devices: n - retired, Active: active, Disabled: disabled, Retired: retired,
		Online: online, Offline: offline, Problems: kinds, Opened: s.Opened, Resolved: 0, Open: s.Open, Duration: s.Duration,
		Rules: rules, Rollouts: s.Rollouts}, s)

	// Stricter rules find more, and the SQL still agrees.
	strict := health.Rules{OfflineAfter: time.Minute, AckWithin: time.Minute, ExpiringWithin: 30 * 24 * time.Hour}
	s2, err := reg.RunHealthCheck(ctx, "hc-2", strict)
	require.NoError(t, err)
	want2 := expectedFindings(loadHealthDevices(t, reg), strict, s2.At)
	require.Greater(t, len(want2), len(want))
	require.Equal(t, want2, openFindings(t, reg))
	require.Equal(t, countKinds(want2), s2.Problems)
}

func TestHealthCheckWithoutRollouts(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	_, err := reg.Pool().Exec(ctx, healthFleetSQL, 120)
	require.NoError(t, err)
	s, err := reg.RunHealthCheck(ctx, "hc-1", health.Rules{})
	require.NoError(t, err)
	require.Zero(t, s.Problems[health.KindFirmwareNoncompliant])
	require.Empty(t, s.Rollouts)
	devs := loadHealthDevices(t, reg)
	for i := range devs {
		devs[i].CompliantVersion = ""
	}
	require.Equal(t, expectedFindings(devs, health.DefaultRules(), s.At), openFindings(t, reg))

	// An empty fleet is a fleet too.
	empty := open(t)
	s, err = empty.RunHealthCheck(ctx, "hc-empty", health.Rules{})
	require.NoError(t, err)
	require.Zero(t, s.Devices)
	require.Zero(t, s.Open)
}

// insertDevice adds one device with direct SQL.
func insertDevice(t *testing.T, reg *registry.Registry, id, status string, online bool, lastSeenAgo time.Duration, reported string) {
	t.Helper()
	_, err := reg.Pool().Exec(context.Background(), `INSERT INTO devices (id, status, online, last_seen, created_at, reported)
		VALUES ($1, $2, $3, now() - make_interval(secs => $4), now() - interval '1 day', $5)`,
		id, status, online, lastSeenAgo.Seconds(), reported)
	require.NoError(t, err)
}

func TestHealthCheckAlertLifecycle(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	pool := reg.Pool()
	insertDevice(t, reg, "a", "active", false, time.Hour, `{}`)                           // offline
	insertDevice(t, reg, "b", "active", true, 0, `{"health":{"status":"failing"}}`)       // unhealthy
	insertDevice(t, reg, "c", "active", false, 2*time.Hour, `{"health":{"status":"ok"}}`) // offline, will be retired
	insertDevice(t, reg, "d", "active", true, 0, `{"health":{"status":"ok"}}`)            // fine, for now
	insertDevice(t, reg, "e", "active", false, 3*time.Hour, `{"health":{"status":"ok"}}`) // offline, will be disabled
	insertDevice(t, reg, "f", "active", false, 4*time.Hour, `{"health":{"status":"ok"}}`) // offline, will be deleted

	s1, err := reg.RunHealthCheck(ctx, "hc-1", health.Rules{})
	require.NoError(t, err)
	require.Equal(t, int64(5), s1.Opened)
	require.Equal(t, int64(5), s1.Open)
	first, err := reg.ListAlerts(ctx, registry.AlertFilter{Open: true})
	require.NoError(t, err)
	require.Len(t, first, 5)
	ids := map[string]int64{}
	for _, a := range first {
		ids[a.DeviceID+"/"+string(a.Kind)] = a.ID
		require.Equal(t, s1.At, a.FirstSeen.In(s1.At.Location()))
		require.Equal(t, registry.AlertStateOpen, a.State())
	}

	// Nothing changed: the second check refreshes the same alerts and opens no duplicate.
	s2, err := reg.RunHealthCheck(ctx, "hc-2", health.Rules{})
	require.NoError(t, err)
	require.Zero(t, s2.Opened)
	require.Zero(t, s2.Resolved)
	require.Equal(t, int64(5), s2.Open)
	second, err := reg.ListAlerts(ctx, registry.AlertFilter{})
	require.NoError(t, err)
	require.Len(t, second, 5, "no duplicate alert")
	for _, a := range second {
		require.Equal(t, ids[a.DeviceID+"/"+string(a.Kind)], a.ID)
		require.True(t, a.LastSeen.After(a.FirstSeen), "last_seen refreshed")
		require.True(t, a.LastSeen.Equal(s2.At))
		require.True(t, a.FirstSeen.Equal(s1.At), "first_seen kept")
	}

	// a comes back, d turns unhealthy, c is retired, e disabled and f deleted: four alerts resolve, one opens.
	for _, q := range []string{
		"UPDATE devices SET online = true, last_seen = now() WHERE id = 'a'",
		`UPDATE devices SET reported = '{"health":{"status":"critical"}}' WHERE id = 'd'`,
		"UPDATE devices SET status = 'retired' WHERE id = 'c'",
		"UPDATE devices SET status = 'disabled' WHERE id = 'e'",
		"DELETE FROM devices WHERE id = 'f'",
	} {
		_, err := pool.Exec(ctx, q)
		require.NoError(t, err)
	}
	s3, err := reg.RunHealthCheck(ctx, "hc-3", health.Rules{})
	require.NoError(t, err)
	require.Equal(t, int64(1), s3.Opened)
	require.Equal(t, int64(4), s3.Resolved)
	require.Equal(t, int64(2), s3.Open)
	require.Equal(t, int64(1), s3.Retired)
	require.Equal(t, int64(4), s3.Devices)
	open3, err := reg.ListAlerts(ctx, registry.AlertFilter{Open: true})
	require.NoError(t, err)
	var got []string
	for _, a := range open3 {
		got = append(got, a.DeviceID+"/"+string(a.Kind))
	}
	sort.Strings(got)
	require.Equal(t, []string{"b/unhealthy", "d/unhealthy"}, got)
	retiredAlerts, err := reg.ListAlerts(ctx, registry.AlertFilter{DeviceID: "c"})
	require.NoError(t, err)
	require.Len(t, retiredAlerts, 1)
	require.Equal(t, registry.AlertStateResolved, retiredAlerts[0].State(), "a retired device's alert resolves")
	require.True(t, retiredAlerts[0].ResolvedAt.Equal(s3.At))

	// The problem comes back: a new alert opens; the resolved one stays as history.
	_, err = pool.Exec(ctx, "UPDATE devices SET online = false, last_seen = now() - interval '1 hour' WHERE id = 'a'")
	require.NoError(t, err)
	s4, err := reg.RunHealthCheck(ctx, "hc-4", health.Rules{})
	require.NoError(t, err)
	require.Equal(t, int64(1), s4.Opened)
	aAlerts, err := reg.ListAlerts(ctx, registry.AlertFilter{DeviceID: "a"})
	require.NoError(t, err)
	require.Len(t, aAlerts, 2)
	require.Equal(t, registry.AlertStateOpen, aAlerts[0].State(), "newest first")
	require.Equal(t, registry.AlertStateResolved, aAlerts[1].State())
	require.NotEqual(t, aAlerts[0].ID, aAlerts[1].ID)

	limited, err := reg.ListAlerts(ctx, registry.AlertFilter{Limit: 2})
	require.NoError(t, err)
	require.Len(t, limited, 2)
	require.Greater(t, limited[0].ID, limited[1].ID)

	// Acknowledging: unknown ids are ErrNotFound; the first ack is kept; a resolved alert can be acked.
	_, err = reg.AckAlert(ctx, 999999, "alice")
	require.ErrorIs(t, err, fleet.ErrNotFound)
	acked, err := reg.AckAlert(ctx, aAlerts[0].ID, "alice")
	require.NoError(t, err)
	require.Equal(t, registry.AlertStateAcked, acked.State())
	require.Equal(t, "alice", acked.AckedBy)
	again, err := reg.AckAlert(ctx, aAlerts[0].ID, "bob")
	require.NoError(t, err)
	require.Equal(t, "alice", again.AckedBy)
	require.True(t, again.AckedAt.Equal(*acked.AckedAt))
	old, err := reg.AckAlert(ctx, aAlerts[1].ID, "bob")
	require.NoError(t, err)
	require.Equal(t, registry.AlertStateResolved, old.State())
	require.Equal(t, "bob", old.AckedBy)
	// An acknowledged alert is still open to the check: it is refreshed, not reopened.
	s5, err := reg.RunHealthCheck(ctx, "hc-5", health.Rules{})
	require.NoError(t, err)
	require.Zero(t, s5.Opened)
	require.Zero(t, s5.Resolved)

	// Health runs: newest first, one row per run id (a retried check replaces its row).
	_, err = reg.RunHealthCheck(ctx, "hc-5", health.Rules{})
	require.NoError(t, err)
	runs, err := reg.HealthRuns(ctx, 3)
	require.NoError(t, err)
	require.Len(t, runs, 3)
	require.Equal(t, []string{"hc-5", "hc-4", "hc-3"}, []string{runs[0].ID, runs[1].ID, runs[2].ID})
	require.Equal(t, s3.Open, runs[2].Summary.Open, "the summary is stored")
	require.Equal(t, s3.Resolved, runs[2].Summary.Resolved)
	require.Equal(t, s3.Problems, runs[2].Summary.Problems)
	require.NotNil(t, runs[0].FinishedAt)
	var nRuns int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM health_runs").Scan(&nRuns))
	require.Equal(t, 5, nRuns)
}

func TestHealthCheckRefusesBadRules(t *testing.T) {
	reg := open(t)
	_, err := reg.RunHealthCheck(context.Background(), "hc", health.Rules{OfflineAfter: -time.Minute})
	require.Error(t, err)
	require.Contains(t, err.Error(), "--offline-after")
	_, err = reg.RunHealthCheck(context.Background(), "", health.Rules{})
	require.Error(t, err)
}

func TestHealthCheckSkipsRolloutsWhoseQueryNoLongerCompiles(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	insertDevice(t, reg, "x", "active", true, 0, `{"firmware":{"version":"1.0.0"}}`)
	_, err := reg.Pool().Exec(ctx, `INSERT INTO firmware (version, url, sha256) VALUES ('2.0.0', 'http://fw', repeat('c', 64));
		INSERT INTO rollouts (id, version, query, spec, state, finished_at) VALUES
		('ro-good', '2.0.0', 'SELECT * FROM devices', '{}', 'completed', now() - interval '1 day'),
		('ro-bad', '2.0.0', 'SELECT nonsense', '{}', 'completed', now())`)
	require.NoError(t, err)
	s, err := reg.RunHealthCheck(ctx, "hc", health.Rules{})
	require.NoError(t, err)
	require.Equal(t, []string{"ro-good"}, s.Rollouts)
	require.Equal(t, int64(1), s.Problems[health.KindFirmwareNoncompliant])
	alerts, err := reg.ListAlerts(ctx, registry.AlertFilter{DeviceID: "x"})
	require.NoError(t, err)
	require.Len(t, alerts, 1)
	require.Equal(t, "runs 1.0.0; rollout ro-good installed 2.0.0", alerts[0].Detail)
}

func TestHealthChecksSerialize(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	_, err := reg.Pool().Exec(ctx, healthFleetSQL, 300)
	require.NoError(t, err)
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		go func() {
			_, err := reg.RunHealthCheck(ctx, fmt.Sprintf("hc-%d", i), health.Rules{})
			errs <- err
		}()
	}
	for i := 0; i < 4; i++ {
		require.NoError(t, <-errs)
	}
	var open, dup int64
	require.NoError(t, reg.Pool().QueryRow(ctx, `SELECT count(*), count(*) - count(DISTINCT (device_id, kind))
		FROM alerts WHERE resolved_at IS NULL`).Scan(&open, &dup))
	require.Positive(t, open)
	require.Zero(t, dup)
}
