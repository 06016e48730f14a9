package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/internal/simulator"
	"github.com/fleetflow/fleetflow/workflows"
)

// A job with maintenance windows reaches the devices whose window is open, reports the one whose window does
// not open before the deadline and the one whose window tag does not parse, per device; rollout plan shows
// the windows the devices hold, when each wave can start under the operation's window, and, with devices'
// own windows, when each wave's windows open and how many devices are outside them.
func TestMaintenanceWindowsOfJobsAndPlans(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e.workerProcess()
	e.fleet(ctx, 4, "mw")
	// A window three days from now (UTC): never open within the job's one-minute deadline.
	later := time.Now().UTC().AddDate(0, 0, 3).Format("Mon")
	for id, tags := range map[string]string{
		"mw-0001": `{"maintenance": "daily 00:00-24:00", "timezone": "Asia/Tokyo"}`,
		"mw-0002": `{"maintenance": "` + later + ` 00:00-01:00", "timezone": "UTC"}`,
		"mw-0003": `{"maintenance": "Someday 01:00-02:00"}`,
		// mw-0004 has none: the operation's window applies.
	} {
		_, err := e.cli(ctx, "twin", "set-tags", id, "--patch", tags)
		require.NoError(t, err)
	}

	out, err := e.cli(ctx, "job", "start", "--query", "SELECT * FROM devices WHERE tags.region = 'mw'", "--set-tags", `{"ring": "beta"}`,
		"--window-from-tags", "--window", "daily 00:00-24:00", "--deadline", "1m")
	require.Error(t, err)
	assert.Equal(t, 3, exitCodeOf(err), "some devices were not reached")
	assert.Contains(t, out, "outside their maintenance window 1")
	id := strings.Fields(strings.SplitN(out, "job ", 2)[1])[0]
	devs, err := e.reg.JobDevices(ctx, id, nil, 10)
	require.NoError(t, err)
	states := map[string]fleet.JobState{}
	for _, d := range devs {
		states[d.DeviceID] = d.State
		switch d.DeviceID {
		case "mw-0002":
			assert.Contains(t, d.Error, "does not open before the operation's deadline")
		case "mw-0003":
			assert.Contains(t, d.Error, `unknown day "Someday"`)
		}
	}
	assert.Equal(t, map[string]fleet.JobState{"mw-0001": fleet.JobSucceeded, "mw-0002": fleet.JobOutsideWindow,
		"mw-0003": fleet.JobFailed, "mw-0004": fleet.JobSucceeded}, states)

	_, err = e.cli(ctx, "firmware", "add", "--version", "9.0.0", "--url", "https://fw.example/9.bin", "--sha256", strings.Repeat("ef", 32))
	require.NoError(t, err)
	// Under the operation's window alone, the waves start inside it.
	plan, err := e.cli(ctx, "rollout", "plan", "--firmware", "9.0.0", "--query", "SELECT * FROM devices WHERE tags.region = 'mw'",
		"--window", "Sun 02:00-04:00", "--timezone", "Europe/Berlin", "-o", "json")
	require.NoError(t, err)
	var op struct {
		Waves []struct {
			CanStart time.Time `json:"canStart"`
		} `json:"waves"`
	}
	require.NoError(t, json.Unmarshal([]byte(plan), &op), plan)
	require.NotEmpty(t, op.Waves)
	assert.Equal(t, time.Sunday, op.Waves[0].CanStart.In(mustZone(t, "Europe/Berlin")).Weekday(), "waves start inside the operation's window")

	// With devices' own windows, each wave says when its devices' windows open and how many are outside.
	plan, err = e.cli(ctx, "rollout", "plan", "--firmware", "9.0.0", "--query", "SELECT * FROM devices WHERE tags.region = 'mw'",
		"--window", later+" 02:00-04:00", "--timezone", "Europe/Berlin", "--window-from-tags", "--waves", "100%", "--deadline", "1m", "-o", "json")
	require.NoError(t, err)
	var v struct {
		Waves []struct {
			DeviceWindows struct {
				FirstOpens    time.Time `json:"firstOpens"`
				OutsideWindow int64     `json:"outsideWindow"`
				BadWindow     int64     `json:"badWindow"`
			} `json:"deviceWindows"`
		} `json:"waves"`
		Windows []struct {
			Window, Timezone, Source, Problem string
			Devices                           int64
		} `json:"windows"`
	}
	require.NoError(t, json.Unmarshal([]byte(plan), &v), plan)
	require.Len(t, v.Waves, 1)
	dw := v.Waves[0].DeviceWindows
	assert.EqualValues(t, 2, dw.OutsideWindow, "mw-0002's window and the operation's (mw-0004) do not open within a minute")
	assert.EqualValues(t, 1, dw.BadWindow)
	assert.WithinDuration(t, time.Now(), dw.FirstOpens, time.Minute, "mw-0001's window is open now")
	sources := map[string]string{}
	for _, w := range v.Windows {
		sources[w.Window+"|"+w.Source] = w.Problem
		assert.EqualValues(t, 1, w.Devices)
	}
	assert.Contains(t, sources, "daily 00:00-24:00|tags")
	assert.Contains(t, sources, later+" 02:00-04:00|operation")
	assert.Contains(t, sources["Someday 01:00-02:00|tags"], "unknown day")
}

// A rollout honours each device's own window: with a scheme that declares the window and time zone tags
// (with fleetflow's formats), a bad window is refused when it is written, a misspelt --window-tag is refused
// naming the declared tag, the plan counts the device whose window does not open before the deadline, and
// the rollout updates the devices in their window and reports that one as outside_window.
func TestRolloutHonoursDevicesOwnWindows(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e.workerProcess()
	cs := e.fleet(ctx, 3, "rw")
	e.simulate(ctx, cs, simulator.Config{})
	schemeFile := filepath.Join(t.TempDir(), "scheme.json")
	require.NoError(t, os.WriteFile(schemeFile, []byte(`{"type": "object", "properties": {
		"region": {"type": "string"},
		"maintenance": {"type": "string", "format": "maintenance-window"},
		"tz": {"type": "string", "format": "timezone"}}}`), 0o600))
	_, err := e.cli(ctx, "scheme", "set", schemeFile)
	require.NoError(t, err)

	out, err := e.cliCombined(ctx, "twin", "set-tags", "rw-0002", "--patch", `{"maintenance": "Sunday 02:00-04:00"}`)
	require.Error(t, err, "the scheme refuses a window the parser does not accept")
	assert.Contains(t, out, "tags.maintenance")
	assert.Contains(t, out, `unknown day "Sunday"`)
	out, err = e.cliCombined(ctx, "twin", "set-tags", "rw-0002", "--patch", `{"tz": "Mars/Olympus"}`)
	require.Error(t, err)
	assert.Contains(t, out, "tags.tz")

	later := time.Now().UTC().AddDate(0, 0, 3).Format("Mon")
	for id, tags := range map[string]string{
		"rw-0001": `{"maintenance": "daily 00:00-24:00", "tz": "Asia/Tokyo"}`,
		"rw-0002": `{"maintenance": "` + later + ` 00:00-01:00", "tz": "UTC"}`,
		// rw-0003 has none: the operation's window (open all day) applies.
	} {
		_, err := e.cli(ctx, "twin", "set-tags", id, "--patch", tags)
		require.NoError(t, err)
	}
	_, err = e.cli(ctx, "firmware", "add", "--version", "7.0.0", "--url", "https://fw.example/7.bin", "--sha256", strings.Repeat("cd", 32))
	require.NoError(t, err)
	q := "SELECT * FROM devices WHERE tags.region = 'rw'"

	out, err = e.cliCombined(ctx, "rollout", "start", "--firmware", "7.0.0", "--query", q, "--window-from-tags", "--window-tag", "maintenence")
	require.Error(t, err)
	assert.Equal(t, 2, exitCodeOf(err))
	assert.Contains(t, out, "tags.maintenence is not in the scheme (version 1); did you mean tags.maintenance?")

	// The time zone tag is tz, as the scheme declares it: no --timezone-tag needed.
	plan, err := e.cli(ctx, "rollout", "plan", "--firmware", "7.0.0", "--query", q, "--waves", "100%", "--window-from-tags",
		"--window", "daily 00:00-24:00", "--deadline", "1m", "-o", "json")
	require.NoError(t, err)
	var v struct {
		Waves []struct {
			DeviceWindows struct {
				OutsideWindow int64 `json:"outsideWindow"`
			} `json:"deviceWindows"`
		} `json:"waves"`
	}
	require.NoError(t, json.Unmarshal([]byte(plan), &v), plan)
	require.Len(t, v.Waves, 1)
	assert.EqualValues(t, 1, v.Waves[0].DeviceWindows.OutsideWindow, plan)

	out, err = e.cli(ctx, "rollout", "start", "--firmware", "7.0.0", "--query", q, "--waves", "100%", "--window-from-tags",
		"--window", "daily 00:00-24:00", "--deadline", "1m")
	assert.Equal(t, 3, exitCodeOf(err), "a device was not updated: %v", err)
	assert.Contains(t, out, "1 outside their window")
	var res workflows.RolloutResult
	require.NoError(t, e.tc.GetWorkflow(ctx, startedRollout(t, out), "").Get(ctx, &res))
	assert.Equal(t, "completed", res.State)
	assert.Equal(t, rollout.Counts{Succeeded: 2, OutsideWindow: 1}, res.Counts)
	assert.Equal(t, "7.0.0", e.reportedField(ctx, "rw-0001", "firmware", "version"))
	assert.Equal(t, "7.0.0", e.reportedField(ctx, "rw-0003", "firmware", "version"))
	assert.NotEqual(t, "7.0.0", e.reportedField(ctx, "rw-0002", "firmware", "version"))
	devs, err := e.reg.RolloutDevices(ctx, res.RolloutID, []rollout.Phase{rollout.OutsideWindow}, 10)
	require.NoError(t, err)
	require.Len(t, devs, 1)
	assert.Equal(t, "rw-0002", devs[0].DeviceID)
	assert.Contains(t, devs[0].Reason, "does not open before the operation's deadline")
	assert.Contains(t, devs[0].Reason, "next opening")

	status, err := e.cli(ctx, "rollout", "status", res.RolloutID)
	require.NoError(t, err)
	assert.Contains(t, status, "outside their maintenance window:")
	assert.Contains(t, status, "rw-0002")
}

func mustZone(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	require.NoError(t, err)
	return loc
}
