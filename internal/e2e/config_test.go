package e2e

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/simulator"
)

// configCounts reads `config status NAME -o json`'s counts.
func (e *env) configCounts(ctx context.Context, name string) fleet.ConfigCounts {
	e.t.Helper()
	out, err := e.cli(ctx, "config", "status", name, "-o", "json")
	require.NoError(e.t, err)
	var v struct {
		Counts fleet.ConfigCounts `json:"counts"`
	}
	require.NoError(e.t, json.Unmarshal([]byte(out), &v), out)
	return v.Counts
}

// desiredField reads properties.desired.<key> of a device as JSON text ("" when missing).
func (e *env) desiredField(ctx context.Context, id, key string) string {
	t, err := e.reg.GetTwin(ctx, id)
	require.NoError(e.t, err)
	var doc map[string]json.RawMessage
	require.NoError(e.t, json.Unmarshal(t.Properties.Desired.Doc, &doc))
	return string(doc[key])
}

// A configuration reaches the devices it targets now, devices provisioned later and a device retagged into
// it; a higher-priority configuration wins the key it shares on the device both target, and gives it back
// when deleted; an update applies a new version, also after the worker was replaced.
func TestConfigurationFollowsTheFleet(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	worker := e.workerProcess()
	eu := e.fleet(ctx, 3, "eu")
	e.fleet(ctx, 1, "us")
	e.simulate(ctx, eu, simulator.Config{})

	_, err := e.cli(ctx, "config", "apply", "base", "--target", "SELECT * FROM devices WHERE tags.region = 'eu'", "--priority", "1",
		"--set-desired", `{"interval": 30, "mode": "eco"}`, "--metric", "online=SELECT * FROM devices WHERE connectionState = 'connected'")
	require.NoError(t, err)
	out, err := e.cli(ctx, "config", "apply", "hot", "--target", "SELECT * FROM devices WHERE deviceId = 'eu-0001'", "--priority", "10",
		"--set-desired", `{"interval": 5}`)
	require.NoError(t, err)
	assert.Contains(t, out, "configuration hot applied")

	require.Eventually(t, func() bool {
		return e.reportedField(ctx, "eu-0001", "interval") == "5" && e.reportedField(ctx, "eu-0002", "interval") == "30" &&
			e.reportedField(ctx, "eu-0001", "mode") == "eco" && e.configCounts(ctx, "base").Acked == 3
	}, time.Minute, 200*time.Millisecond, "the configurations reach the devices they target, hot winning interval on eu-0001")
	c := e.configCounts(ctx, "base")
	assert.Equal(t, fleet.ConfigCounts{Targeted: 3, Applied: 3, Acked: 3, Metrics: []fleet.ConfigMetricCount{{Name: "online", Count: 3}}}, c)
	status, err := e.cli(ctx, "config", "status", "base")
	require.NoError(t, err)
	assert.Contains(t, status, `conflict: key "interval" is also set by hot (priority 10) on 1 devices: hot wins`)

	// Late joiners: provisioned after the configuration, picked up by themselves.
	lateCreds := filepath.Join(t.TempDir(), "late.creds")
	_, err = e.cli(ctx, "provision", "--count", "2", "--prefix", "eu-late-", "--tags", "region=eu", "--creds-out", lateCreds, "-o", "json")
	require.NoError(t, err)
	e.simulate(ctx, mustCreds(t, lateCreds), simulator.Config{})
	// A retagged device joins the target too (offline: applied, not acknowledged).
	_, err = e.cli(ctx, "twin", "set-tags", "us-0001", "--patch", `{"region": "eu"}`)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return e.reportedField(ctx, "eu-late-0002", "interval") == "30" && e.desiredField(ctx, "us-0001", "mode") == `"eco"`
	}, time.Minute, 200*time.Millisecond, "late joiners and a retagged device get the configuration")
	require.Eventually(t, func() bool {
		c := e.configCounts(ctx, "base")
		return c.Targeted == 6 && c.Applied == 6 && c.Acked == 5
	}, time.Minute, 200*time.Millisecond)

	// The worker is replaced; an update still reaches every device.
	require.NoError(t, worker.Process.Kill())
	_, _ = worker.Process.Wait()
	e.workerProcess()
	out, err = e.cli(ctx, "config", "apply", "base", "--target", "SELECT * FROM devices WHERE tags.region = 'eu'", "--priority", "1",
		"--set-desired", `{"interval": 60, "mode": "eco"}`)
	require.NoError(t, err)
	assert.Contains(t, out, "updated to version 2")
	require.Eventually(t, func() bool {
		return e.reportedField(ctx, "eu-0002", "interval") == "60" && e.reportedField(ctx, "eu-late-0001", "interval") == "60"
	}, time.Minute, 200*time.Millisecond, "version 2 reaches the devices")
	assert.Equal(t, "5", e.reportedField(ctx, "eu-0001", "interval"), "hot still wins interval on eu-0001")

	// Deleting hot leaves eu-0001 as it is until base, which it outranked, takes the key back.
	out, err = e.cli(ctx, "config", "delete", "hot")
	require.NoError(t, err)
	assert.Contains(t, out, "devices keep the values it wrote")
	require.Eventually(t, func() bool { return e.reportedField(ctx, "eu-0001", "interval") == "60" }, time.Minute, 200*time.Millisecond)
	list, err := e.cli(ctx, "config", "list")
	require.NoError(t, err)
	assert.Contains(t, list, "base")
	assert.NotContains(t, list, "hot")

	out, err = e.cli(ctx, "config", "pause", "base")
	require.NoError(t, err)
	assert.Contains(t, out, "paused")
	_, err = e.cli(ctx, "config", "pause", "base")
	require.Error(t, err, "a second pause is refused by the validator")
}
