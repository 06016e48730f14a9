package simulator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/simulator"
)

// simFleet is a fake registry, a gateway and a service client that plays the part of the workers: it writes
// desired state to the store and publishes the patch, as the job activities do.
type simFleet struct {
	t     *testing.T
	store *gatewaytest.Store
	gw    *gateway.Gateway
	svc   *gatewaytest.Client
	creds []creds.Credential
}

func newFleet(t *testing.T, n int) *simFleet {
	t.Helper()
	f := &simFleet{t: t, store: gatewaytest.New()}
	for i := range n {
		c := creds.Credential{ID: fmt.Sprintf("sim-%03d", i), Secret: "secret-" + strconv.Itoa(i)}
		f.store.Add(c.ID, c.Secret)
		f.creds = append(f.creds, c)
	}
	f.gw = gatewaytest.StartGateway(t, f.store, gateway.Config{})
	f.svc = gatewaytest.Service(t, gatewaytest.URL(f.gw), "svc:test")
	return f
}

// setDesired writes patch to the desired documents of ids and publishes it to each device.
func (f *simFleet) setDesired(patch string, ids ...string) {
	f.t.Helper()
	for _, id := range ids {
		v, err := f.store.SetDesired(id, json.RawMessage(patch))
		require.NoError(f.t, err)
		require.NoError(f.t, f.svc.Pub(f.t, "devices/"+id+"/twin/desired/"+strconv.FormatInt(v, 10), 1, patch))
	}
}

func (f *simFleet) ids() []string {
	out := make([]string, len(f.creds))
	for i, c := range f.creds {
		out[i] = c.ID
	}
	return out
}

// reported decodes a device's reported document.
func (f *simFleet) reported(id string) map[string]any {
	doc, _ := f.store.Reported(id)
	m := map[string]any{}
	if len(doc) > 0 {
		require.NoError(f.t, json.Unmarshal(doc, &m))
	}
	return m
}

func (f *simFleet) firmware(id string) string {
	fw, _ := f.reported(id)["firmware"].(map[string]any)
	v, _ := fw["version"].(string)
	return v
}

// running is a simulation in the background.
type running struct {
	sim  *simulator.Simulator
	stop func() error
}

func (f *simFleet) start(cfg simulator.Config, list []creds.Credential) *running {
	f.t.Helper()
	cfg.BrokerURL = gatewaytest.URL(f.gw)
	cfg.Creds = list
	cfg.Logger = gatewaytest.Logger(f.t)
	sim, err := simulator.New(cfg)
	require.NoError(f.t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sim.Run(ctx) }()
	r := &running{sim: sim, stop: sync.OnceValue(func() error {
		cancel()
		return <-done
	})}
	f.t.Cleanup(func() { _ = r.stop() })
	require.Eventually(f.t, func() bool { return sim.Stats().Reported == int64(len(list)) }, 20*time.Second, 10*time.Millisecond,
		"%s", sim.Stats())
	return r
}

func statuses(sts []fleet.JobStatus) []string {
	var out []string
	for _, s := range sts {
		out = append(out, s.Status)
	}
	return out
}

func TestDesiredIsAcknowledged(t *testing.T) {
	f := newFleet(t, 3)
	ids := f.ids()
	// Desired state set while the devices were offline is acknowledged on connect.
	f.setDesired(`{"mode":"eco","limits":{"max":5}}`, ids[0])
	sim := f.start(simulator.Config{Seed: 1}, f.creds)
	require.Eventually(t, func() bool { return f.reported(ids[0])["mode"] == "eco" }, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, map[string]any{"max": 5.0}, f.reported(ids[0])["limits"])
	assert.NotContains(t, f.reported(ids[1]), "mode", "only the device whose desired state changed")

	// A job sets telemetryInterval: every device mirrors it in one patch.
	f.setDesired(`{"telemetryInterval":30}`, ids...)
	for _, id := range ids {
		require.Eventually(t, func() bool { return f.reported(id)["telemetryInterval"] == 30.0 }, 5*time.Second, 10*time.Millisecond, id)
	}
	patches := f.store.ReportedPatches(ids[1])
	assert.JSONEq(t, `{"telemetryInterval":30}`, string(patches[len(patches)-1]), "only what changed is reported")

	// Deleting a desired key deletes the reported one; unchanged keys are not re-sent.
	f.setDesired(`{"mode":null,"telemetryInterval":60}`, ids[0])
	require.Eventually(t, func() bool {
		r := f.reported(ids[0])
		_, hasMode := r["mode"]
		return !hasMode && r["telemetryInterval"] == 60.0
	}, 5*time.Second, 10*time.Millisecond)
	patches = f.store.ReportedPatches(ids[0])
	assert.JSONEq(t, `{"mode":null,"telemetryInterval":60}`, string(patches[len(patches)-1]))
	assert.Equal(t, map[string]any{"max": 5.0}, f.reported(ids[0])["limits"])
	// Objects are diffed key by key, so a key deleted inside one goes away in reported too.
	f.setDesired(`{"limits":{"max":null,"min":1}}`, ids[0])
	require.Eventually(t, func() bool {
		return assert.ObjectsAreEqual(map[string]any{"min": 1.0}, f.reported(ids[0])["limits"])
	}, 5*time.Second, 10*time.Millisecond, "%v", f.reported(ids[0]))
	patches = f.store.ReportedPatches(ids[0])
	assert.JSONEq(t, `{"limits":{"max":null,"min":1}}`, string(patches[len(patches)-1]))

	// The capabilities are untouched, and the firmware key is never mirrored.
	f.setDesired(`{"firmware":{"jobId":"j-noop","version":"`+simulator.Capabilities(ids[2], 1)["firmware"].(map[string]any)["version"].(string)+`"}}`, ids[2])
	require.Eventually(t, func() bool {
		st, ok := f.store.LatestJobStatus("j-noop", ids[2])
		return ok && st.Status == "succeeded"
	}, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, []string{"succeeded"}, statuses(f.store.JobStatusesOf("j-noop", ids[2])),
		"a device already running the version closes the job at once")
	r := f.reported(ids[2])
	assert.Equal(t, simulator.Capabilities(ids[2], 1)["model"], r["model"])
	assert.NotContains(t, r["firmware"], "jobId")
	st := sim.sim.Stats()
	assert.GreaterOrEqual(t, st.DesiredAcks, int64(5))
	assert.Zero(t, st.FirmwareUpdates)
}

func TestFirmwareUpdatesSurviveRestarts(t *testing.T) {
	const n = 40
	f := newFleet(t, n)
	ids := f.ids()
	const seed, target = 11, "2.0.0"
	cfg := simulator.Config{
		Seed:              seed,
		FirmwareStepDelay: 20 * time.Millisecond,
		FailInstall:       simulator.VersionFractions{target: 0.25},
		Unhealthy:         simulator.VersionFractions{target: 0.25},
	}
	fails := func(id string) bool { return simulator.InstallFails(seed, id, target, 0.25) }
	unhealthy := func(id string) bool { return simulator.TurnsUnhealthy(seed, id, target, 0.25) }
	var nFail, nSick int
	for _, id := range ids {
		if fails(id) {
			nFail++
		} else if unhealthy(id) {
			nSick++
		}
	}
	require.Positive(t, nFail, "the test needs devices that fail")
	require.Positive(t, nSick, "the test needs devices that turn unhealthy")
	require.Less(t, nFail+nSick, n)

	// The last device is offline while the rollout is dispatched.
	online, late := f.creds[:n-1], f.creds[n-1]
	first := f.start(cfg, online)
	for _, c := range online {
		assert.Equal(t, simulator.Capabilities(c.ID, seed)["firmware"], f.reported(c.ID)["firmware"])
		assert.Equal(t, map[string]any{"status": "ok"}, f.reported(c.ID)["health"])
	}
	job := `{"firmware":{"jobId":"rollout-2.0.0-1","version":"2.0.0","url":"https://fw.example/2.0.0.bin","sha256":"ab12"}}`
	f.setDesired(job, ids...)

	done := func(id string) bool {
		st, ok := f.store.LatestJobStatus("rollout-2.0.0-1", id)
		return ok && (st.Status == "succeeded" || st.Status == "failed")
	}
	for _, c := range online {
		require.Eventually(t, func() bool { return done(c.ID) }, 10*time.Second, 10*time.Millisecond, c.ID)
	}
	check := func(id string) {
		t.Helper()
		sts := f.store.JobStatusesOf("rollout-2.0.0-1", id)
		require.NotEmpty(t, sts, id)
		last := sts[len(sts)-1]
		h, _ := f.reported(id)["health"].(map[string]any)
		switch {
		case fails(id):
			assert.Equal(t, "failed", last.Status, id)
			assert.Equal(t, "install failed: checksum mismatch (simulated)", last.Reason, id)
			assert.Equal(t, simulator.Capabilities(id, seed)["firmware"].(map[string]any)["version"], f.firmware(id), "%s keeps its version", id)
			assert.Equal(t, map[string]any{"status": "ok"}, h, id)
		default:
			assert.Equal(t, "succeeded", last.Status, id)
			assert.Equal(t, 100, last.Progress, id)
			assert.Equal(t, target, f.firmware(id), id)
			if unhealthy(id) {
				assert.Equal(t, map[string]any{"status": "failing", "reason": "watchdog resets after update (simulated)"}, h, id)
			} else {
				assert.Equal(t, map[string]any{"status": "ok"}, h, id)
			}
		}
	}
	var failedOnline, updatedOnline int64
	for _, c := range online {
		check(c.ID)
		sts := statuses(f.store.JobStatusesOf("rollout-2.0.0-1", c.ID))
		if fails(c.ID) {
			failedOnline++
			assert.Equal(t, []string{"downloading", "downloading", "installing", "failed"}, sts, c.ID)
		} else {
			updatedOnline++
			assert.Equal(t, []string{"downloading", "downloading", "installing", "rebooting", "succeeded"}, sts, c.ID)
		}
		assert.Equal(t, map[string]any{"version": f.firmware(c.ID)}, f.reported(c.ID)["firmware"],
			"%s: desired.firmware is performed, not mirrored", c.ID)
	}
	st := first.sim.Stats()
	assert.Equal(t, updatedOnline, st.FirmwareUpdates)
	assert.Equal(t, failedOnline, st.FirmwareFailed)
	// The reported firmware version came before the job's final status (the rollout reads both).
	for _, c := range online {
		if !fails(c.ID) {
			patches := f.store.ReportedPatches(c.ID)
			var fw struct {
				Firmware struct{ Version string } `json:"firmware"`
			}
			require.NoError(t, json.Unmarshal(patches[len(patches)-1], &fw))
			assert.Equal(t, target, fw.Firmware.Version, c.ID)
		}
	}

	// Diagnostics tell the running version and health.
	var sick string
	for _, id := range ids[:n-1] {
		if !fails(id) && unhealthy(id) {
			sick = id
			break
		}
	}
	f.svc.Sub(t, 0, "devices/+/methods/res/+/+")
	require.NoError(t, f.svc.Pub(t, "devices/"+sick+"/methods/req/diagnostics/d1", 0, `{}`))
	m, ok := f.svc.WaitMessage(t, "devices/"+sick+"/methods/res/200/d1", 3*time.Second)
	require.True(t, ok)
	var diag struct {
		Firmware struct{ Version string }
		Health   map[string]any
	}
	require.NoError(t, json.Unmarshal(m.Payload, &diag))
	assert.Equal(t, target, diag.Firmware.Version)
	assert.Equal(t, "failing", diag.Health["status"])

	// Restart: the devices keep the version and health they had, and the one that was offline performs
	// the update it missed.
	require.NoError(t, first.stop())
	before := map[string]int{}
	for _, id := range ids {
		before[id] = len(f.store.ReportedPatches(id))
	}
	second := f.start(cfg, f.creds)
	require.Eventually(t, func() bool { return done(late.ID) }, 10*time.Second, 10*time.Millisecond)
	check(late.ID)
	assert.Equal(t, simulator.Capabilities(late.ID, seed)["model"], f.reported(late.ID)["model"])
	for _, c := range online {
		// Every device closes the job again after the restart: succeeded at once for those on the
		// version, failed again (deterministically) for the others.
		require.Eventually(t, func() bool {
			return len(f.store.JobStatusesOf("rollout-2.0.0-1", c.ID)) > 4 && done(c.ID)
		}, 10*time.Second, 10*time.Millisecond, c.ID)
	}
	for _, c := range online {
		check(c.ID)
		// Nothing reported after the restart named the default version or reset the health.
		for _, p := range f.store.ReportedPatches(c.ID)[before[c.ID]:] {
			var doc map[string]any
			require.NoError(t, json.Unmarshal(p, &doc))
			assert.NotContains(t, doc, "firmware", "%s: %s", c.ID, p)
			assert.NotContains(t, doc, "health", "%s: %s", c.ID, p)
		}
	}
	st = second.sim.Stats()
	assert.Equal(t, failedOnline+boolToInt(fails(late.ID)), st.FirmwareFailed)
	assert.Equal(t, 1-boolToInt(fails(late.ID)), st.FirmwareUpdates, "only the late device installs anything")
}

func boolToInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// A newer job supersedes an update in progress: the older one stops, and the device ends on the newer
// version with exactly one update running at a time.
func TestNewerFirmwareJobSupersedes(t *testing.T) {
	f := newFleet(t, 1)
	id := f.ids()[0]
	sim := f.start(simulator.Config{Seed: 2, FirmwareStepDelay: 300 * time.Millisecond}, f.creds)
	f.setDesired(`{"firmware":{"jobId":"job-1","version":"2.0.0"}}`, id)
	require.Eventually(t, func() bool { return len(f.store.JobStatusesOf("job-1", id)) >= 1 }, 5*time.Second, 5*time.Millisecond)
	f.setDesired(`{"firmware":{"jobId":"job-2","version":"3.0.0"}}`, id)
	require.Eventually(t, func() bool {
		st, ok := f.store.LatestJobStatus("job-2", id)
		return ok && st.Status == "succeeded"
	}, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, "3.0.0", f.firmware(id))
	job1 := statuses(f.store.JobStatusesOf("job-1", id))
	assert.NotContains(t, job1, "succeeded", "job-1 stopped: %v", job1)
	assert.NotContains(t, job1, "rebooting", "job-1 stopped: %v", job1)
	// job-2's statuses all came after job-1's last one: the updates never overlapped.
	all := f.store.JobStatuses()
	lastJob1, firstJob2 := -1, -1
	for i, s := range all {
		if s.JobID == "job-1" {
			lastJob1 = i
		}
		if s.JobID == "job-2" && firstJob2 < 0 {
			firstJob2 = i
		}
	}
	assert.Less(t, lastJob1, firstJob2)
	assert.Equal(t, int64(1), sim.sim.Stats().FirmwareUpdates)

	// Re-sending the same job (a reconnect's twin/get) does not run it again.
	require.True(t, f.gw.Kick(id))
	require.Eventually(t, func() bool { return sim.sim.Stats().Reconnects == 1 }, 10*time.Second, 10*time.Millisecond)
	time.Sleep(200 * time.Millisecond)
	assert.Len(t, f.store.JobStatusesOf("job-2", id), 5)
	assert.Equal(t, int64(1), sim.sim.Stats().FirmwareUpdates)
}

// A device whose registry twin already holds a firmware version and health (an earlier simulation) keeps
// them instead of the capability defaults.
func TestRegistryFirmwareWinsOverDefaults(t *testing.T) {
	f := newFleet(t, 2)
	ids := f.ids()
	_, err := f.store.SetReported(ids[0], json.RawMessage(`{"firmware":{"version":"9.9.9"},"health":{"status":"failing","reason":"x"}}`))
	require.NoError(t, err)
	f.start(simulator.Config{Seed: 5}, f.creds)
	r := f.reported(ids[0])
	assert.Equal(t, "9.9.9", f.firmware(ids[0]))
	assert.Equal(t, map[string]any{"status": "failing", "reason": "x"}, r["health"])
	assert.Equal(t, simulator.Capabilities(ids[0], 5)["model"], r["model"])
	want, err := json.Marshal(simulator.Capabilities(ids[1], 5))
	require.NoError(t, err)
	got, _ := f.store.Reported(ids[1])
	assert.JSONEq(t, string(want), string(got))

	// Updating to the version it already runs only closes the job.
	f.setDesired(`{"firmware":{"jobId":"j9","version":"9.9.9"}}`, ids[0])
	require.Eventually(t, func() bool {
		st, ok := f.store.LatestJobStatus("j9", ids[0])
		return ok && st.Status == "succeeded"
	}, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, []string{"succeeded"}, statuses(f.store.JobStatusesOf("j9", ids[0])))

	// A healthy update replaces the failing health entirely (no stale reason is left behind).
	f.setDesired(`{"firmware":{"jobId":"j10","version":"10.0.0"}}`, ids[0])
	require.Eventually(t, func() bool {
		st, ok := f.store.LatestJobStatus("j10", ids[0])
		return ok && st.Status == "succeeded"
	}, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, "10.0.0", f.firmware(ids[0]))
	assert.Equal(t, map[string]any{"status": "ok"}, f.reported(ids[0])["health"])
}

// desired.telemetryInterval slows a device's telemetry down (within the shared schedule's resolution).
func TestTelemetryIntervalIsHonoured(t *testing.T) {
	f := newFleet(t, 2)
	ids := f.ids()
	f.setDesired(`{"telemetryInterval":1}`, ids[0])
	f.svc.Sub(t, 0, "devices/+/telemetry/#")
	f.start(simulator.Config{Seed: 1, TelemetryEvery: 100 * time.Millisecond}, f.creds)
	time.Sleep(2 * time.Second)
	count := map[string]int{}
	for _, m := range f.svc.Messages() {
		for _, id := range ids {
			if m.Topic == "devices/"+id+"/telemetry/env" {
				count[id]++
			}
		}
	}
	t.Logf("telemetry in 2 s: %v", count)
	assert.GreaterOrEqual(t, count[ids[1]], 10, "the simulation's period: every 100 ms")
	assert.GreaterOrEqual(t, count[ids[0]], 1)
	assert.LessOrEqual(t, count[ids[0]], 3, "telemetryInterval=1 s")
	assert.Equal(t, 1.0, f.reported(ids[0])["telemetryInterval"])
}
