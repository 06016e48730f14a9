package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/report"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

// runReportCmd runs `fleetflow report args...` and returns what it printed.
func runReportCmd(t *testing.T, cfg config.Config, args ...string) (string, error) {
	t.Helper()
	cmd := newReportCmd(&globals{cfg: cfg})
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	cmd.SilenceUsage = true
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func TestReportCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url := testenv.Postgres(t)
	reg, err := registry.Open(ctx, url)
	require.NoError(t, err)
	defer reg.Close()
	_, err = reg.Pool().Exec(ctx, `
		INSERT INTO devices (id, status, online, reported) VALUES
		  ('r1', 'active', true, '{"firmware":{"version":"3.0.0"}}'),
		  ('r2', 'active', false, '{"firmware":{"version":"3.0.0"}}'),
		  ('r3', 'disabled', false, '{"firmware":{"version":"2.9.1"}}'),
		  ('r4', 'retired', false, '{}');
		INSERT INTO alerts (device_id, kind, first_seen, last_seen) VALUES ('r2', 'offline', now(), now());
		INSERT INTO health_runs (id, started_at, finished_at, summary) VALUES
		  ('hc-1', now() - interval '1 hour', now(), '{"online": 2, "offline": 1, "open": 0}'),
		  ('hc-2', now(), now(), '{"online": 1, "offline": 2, "open": 1}')`)
	require.NoError(t, err)

	// A fleet operation in flight: started with no worker on its queue, it stays Running.
	hostPort := testenv.Temporal(t)
	c, err := client.DialContext(ctx, client.Options{HostPort: hostPort, Logger: tlog.NewStructuredLogger(slog.New(slog.DiscardHandler))})
	require.NoError(t, err)
	defer c.Close()
	id := "rollout-3.0.0-" + strings.ReplaceAll(t.Name(), "/", "-") + time.Now().Format("150405.000")
	_, err = c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: id, TypedSearchAttributes: temporal.NewSearchAttributes(
		searchattr.Op.ValueSet(searchattr.OpRollout), searchattr.State.ValueSet(searchattr.StateRunning),
		searchattr.Total.ValueSet(2), searchattr.Done.ValueSet(1))}, "FirmwareRollout")
	require.NoError(t, err)

	cfg := config.Config{DatabaseURL: url, TemporalAddress: hostPort, Namespace: "default"}
	htmlPath := filepath.Join(t.TempDir(), "fleet.html")
	var d report.Data
	require.Eventually(t, func() bool {
		out, err := runReportCmd(t, cfg, "-o", "json", "--html", htmlPath)
		require.NoError(t, err)
		d = report.Data{}
		require.NoError(t, json.Unmarshal([]byte(out), &d), out)
		return len(d.Operations) > 0
	}, 20*time.Second, 200*time.Millisecond, "the rollout shows up in visibility")
	require.Equal(t, registry.DeviceCounts{Total: 4, Active: 2, Disabled: 1, Retired: 1, Online: 1, Offline: 2}, d.Devices)
	require.Equal(t, []registry.VersionCount{{Version: "3.0.0", Devices: 2}, {Version: "2.9.1", Devices: 1}}, d.Firmware)
	require.Equal(t, registry.KindCount{Kind: registry.AlertOffline, Open: 1}, d.Alerts[0])
	require.Len(t, d.Health, 2)
	require.Equal(t, "hc-2", d.Health[1].ID)
	require.Empty(t, d.OperationsError)
	var op *report.Operation
	for i := range d.Operations {
		if d.Operations[i].ID == id {
			op = &d.Operations[i]
		}
	}
	require.NotNil(t, op, "operations: %+v", d.Operations)
	require.Equal(t, int64(2), op.Total)
	require.Equal(t, int64(1), op.Done)

	page, err := os.ReadFile(htmlPath)
	require.NoError(t, err)
	require.Contains(t, string(page), `data-op="`+id+`"`)
	require.NotContains(t, string(page), "<script")
	st, err := os.Stat(htmlPath)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), st.Mode().Perm())
	left, err := filepath.Glob(filepath.Join(filepath.Dir(htmlPath), ".fleet.html.*"))
	require.NoError(t, err)
	require.Empty(t, left, "no temporary file is left behind")

	// Temporal down: the report still comes, and says why operations are missing.
	cfg.TemporalAddress = "127.0.0.1:1"
	out, err := runReportCmd(t, cfg)
	require.NoError(t, err)
	require.Contains(t, out, "DEVICES  4 registered")
	require.Contains(t, out, "OPERATIONS IN FLIGHT  unavailable: connect to temporal at 127.0.0.1:1")
	require.Contains(t, out, "HEALTH TREND  last 2 checks")

	// YAML has the JSON's field names; an unknown format is refused, naming the ones there are.
	out, err = runReportCmd(t, cfg, "-o", "yaml")
	require.NoError(t, err)
	require.Contains(t, out, "operationsError: 'connect to temporal at 127.0.0.1:1")
	_, err = runReportCmd(t, cfg, "-o", "xml")
	require.ErrorContains(t, err, `invalid argument "xml" for "-o, --output" flag: want one of text|json|yaml`)
}
