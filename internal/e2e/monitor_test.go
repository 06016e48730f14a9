package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/simulator"
)

// An offline device raises an alert at the next health check, and the alert resolves when it comes back.
func TestOfflineAlertOpensAndResolves(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e.workerProcess()
	cs := e.fleet(ctx, 3, "h")
	e.simulate(ctx, cs[:2], simulator.Config{})
	flaky, stop := e.simulateStoppable(ctx, cs[2:])
	_ = flaky
	out, err := e.cli(ctx, "health", "run", "--offline-after", "1s")
	require.NoError(t, err)
	assert.Contains(t, out, "offline 0")

	stop()
	require.Eventually(t, func() bool {
		d, err := e.reg.GetDevice(ctx, cs[2].ID)
		return err == nil && !d.Online
	}, 10*time.Second, 50*time.Millisecond)
	time.Sleep(1200 * time.Millisecond)
	out, err = e.cli(ctx, "health", "run", "--offline-after", "1s")
	require.NoError(t, err)
	assert.Contains(t, out, "opened 1")
	alerts, err := e.reg.ListAlerts(ctx, registry.AlertFilter{Open: true})
	require.NoError(t, err)
	require.Len(t, alerts, 1)
	assert.Equal(t, cs[2].ID, alerts[0].DeviceID)
	assert.Equal(t, registry.AlertOffline, alerts[0].Kind)

	// A second check while still offline refreshes the alert, it does not open another.
	out, err = e.cli(ctx, "health", "run", "--offline-after", "1s")
	require.NoError(t, err)
	assert.Contains(t, out, "opened 0")

	e.simulate(ctx, cs[2:], simulator.Config{})
	require.Eventually(t, func() bool {
		d, err := e.reg.GetDevice(ctx, cs[2].ID)
		return err == nil && d.Online
	}, 10*time.Second, 50*time.Millisecond)
	out, err = e.cli(ctx, "health", "run", "--offline-after", "1s")
	require.NoError(t, err)
	assert.Contains(t, out, "resolved 1")
	out, err = e.cli(ctx, "alerts", "list", "--device", cs[2].ID, "-o", "json")
	require.NoError(t, err)
	var list []struct {
		Kind       string     `json:"kind"`
		ResolvedAt *time.Time `json:"resolvedAt"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &list), out)
	require.Len(t, list, 1)
	assert.NotNil(t, list[0].ResolvedAt)

	// Credentials with a validity: the check warns once they are within --expiring-within of expiring.
	_, err = e.cli(ctx, "provision", "--count", "2", "--prefix", "exp-", "--credential-validity", "2d",
		"--creds-out", filepath.Join(t.TempDir(), "exp.creds"), "-o", "json")
	require.NoError(t, err)
	out, err = e.cli(ctx, "health", "run", "--offline-after", "1h", "--expiring-within", "3d")
	require.NoError(t, err)
	assert.Contains(t, out, "credentials expiring 2")

	for _, bad := range [][]string{{"health", "run", "--offline-after", "5x"}, {"health", "schedule", "--every", "1s"},
		{"provision", "--count", "1", "--credential-validity", "soon"},
		{"alerts", "ack", "abc"}, {"alerts", "ack", "99999"}} {
		out, err := e.cliCombined(ctx, bad...)
		require.Error(t, err, strings.Join(bad, " "))
		assert.NotEmpty(t, strings.TrimSpace(out))
	}
}

// simulateStoppable runs the simulator over cs and returns a function that disconnects them.
func (e *env) simulateStoppable(ctx context.Context, cs []creds.Credential) (*simulator.Simulator, func()) {
	e.t.Helper()
	simCtx, cancel := context.WithCancel(ctx)
	sim := e.simulate(simCtx, cs, simulator.Config{})
	return sim, cancel
}

// Retiring 10,000 devices by query retires and archives exactly those, and takes them out of pending jobs
// and running rollouts; a wipe reaches connected devices first.
func TestRetireTenThousandByQuery(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e.workerProcess()
	for _, p := range []struct {
		prefix, tags string
		n            int
	}{{"ten-", "batch=x", 10000}, {"keep-", "batch=y", 50}} {
		_, err := e.cli(ctx, "provision", "--count", fmt.Sprint(p.n), "--prefix", p.prefix, "--tags", p.tags,
			"--creds-out", filepath.Join(t.TempDir(), "c"), "-o", "json")
		require.NoError(t, err)
	}
	qx := "SELECT * FROM devices WHERE tags.batch = 'x'"
	// A job and a rollout that still hold devices of the set.
	_, err := e.reg.CreateJob(ctx, fleet.NewJob{ID: "job-pending", Kind: fleet.JobSetTags, Query: qx, Spec: []byte("{}")})
	require.NoError(t, err)
	_, err = e.reg.AddFirmware(ctx, fleet.Firmware{Version: "9.0.0", URL: "https://fw.example/9.bin", SHA256: strings.Repeat("ab", 32)})
	require.NoError(t, err)
	_, err = e.reg.CreateRollout(ctx, fleet.NewRollout{ID: "rollout-9.0.0-1", Version: "9.0.0", Query: qx, Spec: []byte("{}")})
	require.NoError(t, err)

	out, err := e.cli(ctx, "retire", "--query", qx, "--reason", "site closed")
	require.NoError(t, err)
	assert.Contains(t, out, "10000 retired, 0 already retired, 0 unknown")

	var retiredX, retiredY, archived, pendingJob, activeClaims int64
	require.NoError(t, e.reg.Pool().QueryRow(ctx, `SELECT
		(SELECT count(*) FROM devices WHERE tags @> '{"batch":"x"}' AND status = 'retired' AND secret1_hash IS NULL),
		(SELECT count(*) FROM devices WHERE tags @> '{"batch":"y"}' AND status = 'retired'),
		(SELECT count(*) FROM devices_archive WHERE reason = 'site closed'),
		(SELECT count(*) FROM job_devices WHERE job_id = 'job-pending' AND state <> 'cancelled'),
		(SELECT count(*) FROM rollout_devices WHERE rollout_id = 'rollout-9.0.0-1' AND active)`).
		Scan(&retiredX, &retiredY, &archived, &pendingJob, &activeClaims))
	assert.EqualValues(t, 10000, retiredX)
	assert.Zero(t, retiredY)
	assert.EqualValues(t, 10000, archived)
	assert.Zero(t, pendingJob, "the pending job no longer targets retired devices")
	assert.Zero(t, activeClaims, "the rollout released the retired devices")
	res, err := e.reg.Query(ctx, "SELECT COUNT() AS n FROM devices", queryOpts)
	require.NoError(t, err)
	assert.EqualValues(t, 50, res.Rows[0][0], "retired devices are out of default queries")

	// --wipe: a connected device answers the factory reset before it is revoked.
	cs := e.fleet(ctx, 1, "w")
	e.simulate(ctx, cs, simulator.Config{})
	out, err = e.cli(ctx, "retire", cs[0].ID, "--wipe")
	require.NoError(t, err)
	assert.Contains(t, out, "1 retired")
	var payload string
	require.NoError(t, e.reg.Pool().QueryRow(ctx, "SELECT payload::text FROM job_devices WHERE device_id = $1 ORDER BY updated_at DESC LIMIT 1",
		cs[0].ID).Scan(&payload))
	assert.Contains(t, payload, `"wipe": "succeeded"`)
}
