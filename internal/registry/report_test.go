package registry_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/registry"
)

func TestReportDataOnAnEmptyFleet(t *testing.T) {
	rep, err := open(t).ReportData(context.Background())
	require.NoError(t, err)
	require.Equal(t, registry.DeviceCounts{}, rep.Devices)
	require.NotNil(t, rep.Firmware, "JSON shows [] rather than null")
	require.Empty(t, rep.Firmware)
	require.Empty(t, rep.Health)
	require.Len(t, rep.Alerts, len(registry.AlertKinds()), "every kind is listed, with zeros")
	for i, k := range registry.AlertKinds() {
		require.Equal(t, registry.KindCount{Kind: k}, rep.Alerts[i])
	}
	require.WithinDuration(t, time.Now(), rep.At, time.Minute)
}

func TestReportData(t *testing.T) {
	ctx := context.Background()
	reg := open(t)
	exec := func(sql string, args ...any) {
		t.Helper()
		_, err := reg.Pool().Exec(ctx, sql, args...)
		require.NoError(t, err)
	}
	// 10 devices: status × online × firmware chosen so that every count differs.
	devices := []struct {
		id, status string
		online     bool
		reported   string
	}{
		{"d01", "active", true, `{"firmware":{"version":"2.0.0"}}`},
		{"d02", "active", true, `{"firmware":{"version":"2.0.0"}}`},
		{"d03", "active", true, `{"firmware":{"version":"2.0.0"}}`},
		{"d04", "active", false, `{"firmware":{"version":"1.9.0"}}`},
		{"d05", "active", false, `{"firmware":{"version":"1.9.0"}}`},
		{"d06", "active", false, `{}`},                                 // reports no version
		{"d07", "disabled", false, `{"firmware":{"version":"1.9.0"}}`}, // disabled devices still count
		{"d08", "disabled", false, `{"firmware":{"version":"0.1.0-rc"}}`},
		{"d09", "retired", false, `{"firmware":{"version":"0.0.1"}}`}, // retired: not in firmware or connection
		{"d10", "retired", false, `{"firmware":{"version":"2.0.0"}}`},
	}
	for _, d := range devices {
		exec(`INSERT INTO devices (id, status, online, reported) VALUES ($1, $2, $3, $4)`, d.id, d.status, d.online, d.reported)
	}
	now := time.Now().UTC().Truncate(time.Second)
	// Open alerts: 3 offline (one acknowledged: still open), 1 unhealthy, 1 of a kind this version does not know;
	// resolved alerts do not count.
	alerts := []struct {
		device   string
		kind     fleet.AlertKind
		resolved bool
		acked    bool
	}{
		{"d04", registry.AlertOffline, false, false},
		{"d05", registry.AlertOffline, false, true},
		{"d06", registry.AlertOffline, false, false},
		{"d01", registry.AlertOffline, true, false},
		{"d02", registry.AlertUnhealthy, false, false},
		{"d03", registry.AlertUnhealthy, true, false},
		{"d03", "battery_low", false, false},
	}
	for _, a := range alerts {
		var resolved, acked *time.Time
		if a.resolved {
			resolved = &now
		}
		if a.acked {
			acked = &now
		}
		exec(`INSERT INTO alerts (device_id, kind, first_seen, last_seen, resolved_at, acked_at) VALUES ($1, $2, $3, $3, $4, $5)`,
			a.device, a.kind, now, resolved, acked)
	}
	// 15 finished health checks an hour apart, inserted out of order, and one still running (no summary yet).
	for i := 14; i >= 0; i-- {
		at := now.Add(time.Duration(i-15) * time.Hour)
		s := fleet.HealthSummary{At: at, Devices: 8, Active: 6, Disabled: 2, Retired: 2,
			Online: int64(i % 4), Offline: 8 - int64(i%4), Open: int64(i), Problems: map[string]int64{string(registry.AlertOffline): 8 - int64(i%4)},
			Duration: time.Duration(i) * time.Millisecond}
		b, err := json.Marshal(s)
		require.NoError(t, err)
		fin := at.Add(time.Second)
		exec(`INSERT INTO health_runs (id, started_at, finished_at, summary) VALUES ($1, $2, $3, $4)`,
			fmt.Sprintf("healthcheck-%02d", i), at, fin, b)
	}
	exec(`INSERT INTO health_runs (id, started_at) VALUES ('healthcheck-running', $1)`, now)

	rep, err := reg.ReportData(ctx)
	require.NoError(t, err)
	require.Equal(t, registry.DeviceCounts{Total: 10, Active: 6, Disabled: 2, Retired: 2, Online: 3, Offline: 5}, rep.Devices)
	require.Equal(t, []registry.VersionCount{
		{Version: "1.9.0", Devices: 3},
		{Version: "2.0.0", Devices: 3}, // ties by version
		{Version: "", Devices: 1},
		{Version: "0.1.0-rc", Devices: 1},
	}, rep.Firmware)
	var sum int64
	for _, v := range rep.Firmware {
		sum += v.Devices
	}
	require.Equal(t, rep.Devices.Active+rep.Devices.Disabled, sum, "firmware counts cover the devices not retired")
	require.Equal(t, []registry.KindCount{
		{Kind: registry.AlertOffline, Open: 3},
		{Kind: registry.AlertUnhealthy, Open: 1},
		{Kind: registry.AlertDesiredPending},
		{Kind: registry.AlertFirmwareNoncompliant},
		{Kind: registry.AlertCredentialExpiring},
		{Kind: "battery_low", Open: 1},
	}, rep.Alerts)

	require.Len(t, rep.Health, registry.ReportHealthRuns)
	for j, h := range rep.Health {
		i := j + 15 - registry.ReportHealthRuns // the newest 12 of runs 0..14, oldest first
		require.Equal(t, fmt.Sprintf("healthcheck-%02d", i), h.ID)
		at := now.Add(time.Duration(i-15) * time.Hour)
		require.True(t, at.Equal(h.StartedAt), "run %d started %s, want %s", i, h.StartedAt, at)
		require.NotNil(t, h.FinishedAt)
		require.Equal(t, int64(i%4), h.Summary.Online)
		require.Equal(t, 8-int64(i%4), h.Summary.Offline)
		require.Equal(t, int64(i), h.Summary.Open)
		require.Equal(t, 8-int64(i%4), h.Summary.Problems[string(registry.AlertOffline)])
		require.Equal(t, time.Duration(i)*time.Millisecond, h.Summary.Duration)
	}
}
