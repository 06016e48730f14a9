package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/device"
	"github.com/fleetflow/fleetflow/internal/query"
	"github.com/fleetflow/fleetflow/internal/simulator"
	"github.com/fleetflow/fleetflow/workflows"
)

// fleet provisions n devices per region (ids <region>-0001…) and returns their credentials.
func (e *env) fleet(ctx context.Context, n int, regions ...string) []creds.Credential {
	e.t.Helper()
	var all []creds.Credential
	for _, r := range regions {
		path := filepath.Join(e.t.TempDir(), r+".creds")
		_, err := e.cli(ctx, "provision", "--count", fmt.Sprint(n), "--prefix", r+"-", "--tags", "region="+r,
			"--creds-out", path, "-o", "json")
		require.NoError(e.t, err)
		all = append(all, mustCreds(e.t, path)...)
	}
	return all
}

// simulate runs the simulator over cs until the test ends and waits until every device has reported.
func (e *env) simulate(ctx context.Context, cs []creds.Credential, cfg simulator.Config) *simulator.Simulator {
	e.t.Helper()
	cfg.BrokerURL, cfg.Creds = e.mqttURL, cs
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	sim, err := simulator.New(cfg)
	require.NoError(e.t, err)
	simCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = sim.Run(simCtx) }()
	e.t.Cleanup(func() { cancel(); <-done })
	require.Eventually(e.t, func() bool { return sim.Stats().Reported == int64(len(cs)) }, 60*time.Second, 100*time.Millisecond,
		"devices did not all report: %s", sim.Stats())
	return sim
}

// reportedField reads properties.reported.<path> of a device as JSON text ("" when missing).
func (e *env) reportedField(ctx context.Context, id string, path ...string) string {
	t, err := e.reg.GetTwin(ctx, id)
	require.NoError(e.t, err)
	var doc any
	require.NoError(e.t, json.Unmarshal(t.Properties.Reported.Doc, &doc))
	for _, p := range path {
		m, ok := doc.(map[string]any)
		if !ok {
			return ""
		}
		doc = m[p]
	}
	if doc == nil {
		return ""
	}
	b, _ := json.Marshal(doc)
	return strings.Trim(string(b), `"`)
}

func TestJobsReachExactlyTheSelectedDevices(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e.workerProcess()
	cs := e.fleet(ctx, 20, "eu", "us")
	e.simulate(ctx, cs, simulator.Config{})

	out, err := e.cli(ctx, "job", "start", "--query", "SELECT * FROM devices WHERE tags.region = 'eu'", "--dry-run")
	require.NoError(t, err)
	assert.Contains(t, out, "selects 20 devices")

	out, err = e.cli(ctx, "job", "start", "--query", "SELECT * FROM devices WHERE tags.region = 'eu'",
		"--set-desired", `{"telemetryInterval": 30}`, "--timeout", "1m")
	require.NoError(t, err)
	require.Contains(t, out, "completed: 20 devices — succeeded 20, failed 0")
	for _, c := range cs {
		want := ""
		if strings.HasPrefix(c.ID, "eu-") {
			want = "30"
		}
		assert.Equal(t, want, e.reportedField(ctx, c.ID, "telemetryInterval"), "device %s", c.ID)
	}

	out, err = e.cli(ctx, "job", "start", "--query", "SELECT * FROM devices WHERE tags.region = 'us'", "--method", "ping")
	require.NoError(t, err)
	require.Contains(t, out, "completed: 20 devices — succeeded 20, failed 0, timed out 0, offline 0")
	id := strings.Fields(strings.SplitN(out, "job ", 2)[1])[0]
	st, err := e.cli(ctx, "job", "status", id, "-o", "json")
	require.NoError(t, err)
	var status struct {
		Counts map[string]int64 `json:"counts"`
	}
	require.NoError(t, json.Unmarshal([]byte(st), &status))
	assert.Equal(t, map[string]int64{"succeeded": 20}, status.Counts)
	devs, err := e.reg.JobDevices(ctx, id, nil, 100)
	require.NoError(t, err)
	require.Len(t, devs, 20)
	for _, d := range devs {
		assert.True(t, strings.HasPrefix(d.DeviceID, "us-"), d.DeviceID)
		assert.Contains(t, string(d.Payload), `"pong": true`)
	}

	// Tags jobs touch only the registry.
	out, err = e.cli(ctx, "job", "start", "--query", "SELECT * FROM devices WHERE tags.region = 'us'", "--set-tags", `{"ring": "canary"}`)
	require.NoError(t, err)
	require.Contains(t, out, "succeeded 20")
	res, err := e.reg.Query(ctx, "SELECT COUNT() AS n FROM devices WHERE tags.ring = 'canary'", queryOpts)
	require.NoError(t, err)
	assert.EqualValues(t, 20, res.Rows[0][0])

	// A cancel of a finished job is refused plainly.
	_, err = e.cli(ctx, "job", "cancel", id)
	require.Error(t, err)
}

func TestMethodRoundTripTimeoutAndOffline(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e.workerProcess()
	cs := e.fleet(ctx, 3, "m")
	e.simulate(ctx, cs[:1], simulator.Config{})

	out, err := e.cli(ctx, "method", "invoke", "m-0001", "diagnostics")
	require.NoError(t, err)
	assert.Contains(t, out, `"device": "m-0001"`)
	out, err = e.cli(ctx, "devices", "history", "m-0001")
	require.NoError(t, err)
	assert.Contains(t, out, "method diagnostics: succeeded (200)")

	// A device whose handler is slower than the timeout.
	d, err := device.New(device.Config{BrokerURL: e.mqttURL, ID: cs[1].ID, Secret: cs[1].Secret, MethodTimeout: time.Minute})
	require.NoError(t, err)
	d.OnMethod("slow", func(ctx context.Context, _ []byte) (any, error) { time.Sleep(3 * time.Second); return "late", nil })
	require.NoError(t, d.Connect(ctx))
	defer d.Close()
	_, err = e.cli(ctx, "method", "invoke", cs[1].ID, "slow", "--timeout", "500ms")
	require.Error(t, err)

	out, err = e.cliCombined(ctx, "method", "invoke", cs[1].ID, "slow", "--timeout", "500ms")
	require.Error(t, err)
	assert.Contains(t, out, "timeout")
	out, err = e.cliCombined(ctx, "method", "invoke", cs[2].ID, "ping")
	require.Error(t, err)
	assert.Contains(t, out, "device offline")
	// Desired state: an online device gets the patch at once and acknowledges it; an offline one gets the
	// whole document when it connects.
	out, err = e.cli(ctx, "twin", "set-desired", "m-0001", "--patch", `{"mode": "eco"}`)
	require.NoError(t, err)
	assert.Contains(t, out, "pushed to the device")
	require.Eventually(t, func() bool { return e.reportedField(ctx, "m-0001", "mode") == "eco" }, 10*time.Second, 50*time.Millisecond)
	out, err = e.cli(ctx, "twin", "set-desired", cs[2].ID, "--patch", `{"mode": "boost"}`)
	require.NoError(t, err)
	assert.Contains(t, out, "device offline")
	tw, err := e.cli(ctx, "twin", "get", cs[2].ID)
	require.NoError(t, err)
	assert.Regexp(t, `mode\s+"boost"\s+-\s+pending`, tw)
	e.simulate(ctx, cs[2:3], simulator.Config{})
	require.Eventually(t, func() bool { return e.reportedField(ctx, cs[2].ID, "mode") == "boost" }, 10*time.Second, 50*time.Millisecond)
	tw, err = e.cli(ctx, "twin", "get", cs[2].ID)
	require.NoError(t, err)
	assert.Regexp(t, `mode\s+"boost"\s+"boost"\s+acknowledged`, tw)

	out, err = e.cliCombined(ctx, "method", "invoke", "no-such-device", "ping")
	require.Error(t, err)
	assert.Contains(t, out, "no device")
	big := filepath.Join(t.TempDir(), "big.json")
	require.NoError(t, os.WriteFile(big, []byte(`{"x":"`+strings.Repeat("a", 130*1024)+`"}`), 0o600))
	out, err = e.cliCombined(ctx, "method", "invoke", "m-0001", "ping", "--payload", "@"+big)
	require.Error(t, err)
	assert.Contains(t, out, "128 KB")
}

func TestRolloutGoodCompletesBadRollsBack(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e.workerProcess()
	cs := e.fleet(ctx, 20, "eu", "us")
	e.simulate(ctx, cs, simulator.Config{FailInstall: simulator.VersionFractions{"3.0.0": 0.5}})
	before := map[string]string{}
	for _, c := range cs {
		before[c.ID] = e.reportedField(ctx, c.ID, "firmware", "version")
		require.NotEmpty(t, before[c.ID])
	}
	sha := strings.Repeat("ab", 32)
	for _, v := range []string{"2.0.0", "3.0.0"} {
		_, err := e.cli(ctx, "firmware", "add", "--version", v, "--url", "https://fw.example/"+v+".bin", "--sha256", sha)
		require.NoError(t, err)
	}

	out, err := e.cli(ctx, "rollout", "plan", "--firmware", "2.0.0", "--query", "SELECT * FROM devices WHERE tags.region = 'eu'",
		"--waves", "10%,50%,100%")
	require.NoError(t, err)
	assert.Contains(t, out, "20 to update")

	out, err = e.cli(ctx, "rollout", "start", "--firmware", "2.0.0", "--query", "SELECT * FROM devices WHERE tags.region = 'eu'",
		"--waves", "10%,50%,100%", "--max-failures", "5%")
	require.NoError(t, err)
	require.Contains(t, out, "completed after wave 3/3")
	for _, c := range cs {
		want := before[c.ID]
		if strings.HasPrefix(c.ID, "eu-") {
			want = "2.0.0"
		}
		assert.Equal(t, want, e.reportedField(ctx, c.ID, "firmware", "version"), c.ID)
	}

	out, err = e.cli(ctx, "rollout", "start", "--firmware", "3.0.0", "--query", "SELECT * FROM devices WHERE tags.region = 'us'",
		"--waves", "10%,50%,100%", "--max-failures", "10%")
	require.Equal(t, 3, exitCodeOf(err), "a rollout that rolled back finished with per-device failures: %v", err)
	require.Contains(t, out, "rolled back")
	var res workflows.RolloutResult
	require.NoError(t, e.tc.GetWorkflow(ctx, startedRollout(t, out), "").Get(ctx, &res))
	assert.Equal(t, "rolled_back", res.State)
	assert.Less(t, res.WavesDone, 3)
	assert.NotEmpty(t, res.Failures)
	for _, c := range cs {
		if strings.HasPrefix(c.ID, "us-") {
			assert.Equal(t, before[c.ID], e.reportedField(ctx, c.ID, "firmware", "version"), "device %s after the rollback", c.ID)
		}
	}
	assert.EqualValues(t, res.Counts.Touched(), res.Counts.RolledBack, "every touched device rolled back: %s", res.Counts)
}

func TestRolloutSurvivesWorkerKill(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	w := e.workerProcess()
	cs := e.fleet(ctx, 40, "k")
	e.simulate(ctx, cs, simulator.Config{FirmwareStepDelay: 300 * time.Millisecond})
	_, err := e.cli(ctx, "firmware", "add", "--version", "4.0.0", "--url", "https://fw.example/4.bin", "--sha256", strings.Repeat("cd", 32))
	require.NoError(t, err)
	out, err := e.cli(ctx, "rollout", "start", "--firmware", "4.0.0", "--query", "SELECT * FROM devices", "--waves", "25%,50%,100%",
		"--detach")
	require.NoError(t, err)
	id := startedRollout(t, out)
	// Kill the worker once the second wave is under way, and start another.
	require.Eventually(t, func() bool {
		n, err := e.reg.RolloutCounts(ctx, id)
		require.NoError(t, err)
		for _, c := range n {
			if c.Wave == 1 {
				return true
			}
		}
		return false
	}, time.Minute, 50*time.Millisecond)
	require.NoError(t, w.Process.Kill())
	_ = w.Wait()
	e.workerProcess()

	var res workflows.RolloutResult
	require.NoError(t, e.tc.GetWorkflow(ctx, id, "").Get(ctx, &res))
	assert.Equal(t, "completed", res.State)
	assert.EqualValues(t, 40, res.Counts.Succeeded, "%s", res.Counts)
	for _, c := range cs {
		assert.Equal(t, "4.0.0", e.reportedField(ctx, c.ID, "firmware", "version"), c.ID)
	}
}

func TestConfigureBadInput(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e.workerProcess()
	e.fleet(ctx, 5, "b")
	_, err := e.cli(ctx, "firmware", "add", "--version", "5.0.0", "--url", "https://fw.example/5.bin", "--sha256", strings.Repeat("ef", 32))
	require.NoError(t, err)
	q := "SELECT * FROM devices WHERE tags.region = 'b'"
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown firmware", []string{"rollout", "start", "--firmware", "9.9.9", "--query", q}, "unknown firmware"},
		{"empty target set", []string{"rollout", "start", "--firmware", "5.0.0", "--query", "SELECT * FROM devices WHERE tags.region = 'nowhere'"}, "none needs 5.0.0"},
		{"malformed waves", []string{"rollout", "start", "--firmware", "5.0.0", "--query", q, "--waves", "10%,5%,100%"}, "--waves"},
		{"last wave not 100%", []string{"rollout", "start", "--firmware", "5.0.0", "--query", q, "--waves", "10%,50%"}, "100%"},
		{"malformed threshold", []string{"rollout", "start", "--firmware", "5.0.0", "--query", q, "--max-failures", "lots"}, "--max-failures"},
		{"invalid query", []string{"rollout", "start", "--firmware", "5.0.0", "--query", "SELECT * FROM devices WHERE tags.region = "}, "--query"},
		{"bad firmware sha", []string{"firmware", "add", "--version", "6.0.0", "--url", "https://x/y", "--sha256", "abc"}, "64 hex digits"},
		{"duplicate firmware", []string{"firmware", "add", "--version", "5.0.0", "--url", "https://x/y", "--sha256", strings.Repeat("ef", 32)}, "immutable"},
		{"invalid JSON patch", []string{"job", "start", "--query", q, "--set-desired", `{"a": `}, "--set-desired"},
		{"patch not an object", []string{"job", "start", "--query", q, "--set-tags", `[1,2]`}, "--set-tags"},
		{"oversized desired patch", []string{"job", "start", "--query", q, "--set-desired", `{"a":"` + strings.Repeat("x", 33*1024) + `"}`}, "--set-desired"},
		{"empty job target", []string{"job", "start", "--query", "SELECT * FROM devices WHERE tags.region = 'nowhere'", "--set-tags", `{"a":1}`}, "selects no devices"},
		{"two actions", []string{"job", "start", "--query", q, "--set-tags", `{"a":1}`, "--method", "ping"}, "exactly one"},
		{"oversized method payload", []string{"job", "start", "--query", q, "--method", "ping", "--payload", "@" + bigPayload(t)}, "128 KB"},
		{"stale etag", []string{"twin", "set-desired", "b-0001", "--patch", `{"a":1}`, "--if-match", "stale"}, "does not match the current etag"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, err := e.cliCombined(ctx, tc.args...)
			require.Error(t, err, out)
			assert.Contains(t, out, tc.want)
		})
	}
	// Nothing changed: no job or rollout rows, no twin written.
	var jobs, rollouts int
	require.NoError(t, e.reg.Pool().QueryRow(ctx, "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM rollouts)").Scan(&jobs, &rollouts))
	assert.Zero(t, jobs)
	assert.Zero(t, rollouts)
	tw, err := e.reg.GetTwin(ctx, "b-0001")
	require.NoError(t, err)
	assert.EqualValues(t, 1, tw.Properties.Desired.Version)

	// A rollout overlapping a running one is refused, naming it. Without devices connected the first one
	// stays in its first wave.
	out, err := e.cli(ctx, "rollout", "start", "--firmware", "5.0.0", "--query", q, "--waves", "100%", "--detach")
	require.NoError(t, err)
	first := startedRollout(t, out)
	_, err = e.cli(ctx, "firmware", "add", "--version", "5.0.1", "--url", "https://fw.example/5.bin", "--sha256", strings.Repeat("ef", 32))
	require.NoError(t, err)
	out, err = e.cliCombined(ctx, "rollout", "start", "--firmware", "5.0.1", "--query", "SELECT * FROM devices WHERE deviceId = 'b-0003'")
	require.Error(t, err)
	assert.Contains(t, out, first)
	out, err = e.cliCombined(ctx, "rollout", "abort", first)
	require.Error(t, err)
	assert.Contains(t, out, "--rollback or --no-rollback")
}

var queryOpts = query.Options{}

// bigPayload writes a JSON document over the 128 KB method limit and returns its path.
func bigPayload(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "big.json")
	require.NoError(t, os.WriteFile(p, []byte(`"`+strings.Repeat("p", 129*1024)+`"`), 0o600))
	return p
}

// startedRollout is the rollout id `rollout start` printed ("rollout rollout-2.0.0-1 started: ...").
func startedRollout(t *testing.T, out string) string {
	t.Helper()
	m := regexp.MustCompile(`rollout (rollout-\S+) started`).FindStringSubmatch(out)
	require.NotNil(t, m, "no rollout id in %q", out)
	return m[1]
}
