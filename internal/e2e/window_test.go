package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// A job with maintenance windows reaches the devices whose window is open, reports the one whose window does
// not open before the deadline and the one whose window tag does not parse, per device; rollout plan shows
// the windows the devices hold and when each wave can start.
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
	plan, err := e.cli(ctx, "rollout", "plan", "--firmware", "9.0.0", "--query", "SELECT * FROM devices WHERE tags.region = 'mw'",
		"--window", "Sun 02:00-04:00", "--timezone", "Europe/Berlin", "--window-from-tags", "-o", "json")
	require.NoError(t, err)
	var v struct {
		Waves []struct {
			CanStart time.Time `json:"canStart"`
		} `json:"waves"`
		Windows []struct {
			Window, Timezone, Source, Problem string
			Devices                           int64
		} `json:"windows"`
	}
	require.NoError(t, json.Unmarshal([]byte(plan), &v), plan)
	require.NotEmpty(t, v.Waves)
	assert.Equal(t, time.Sunday, v.Waves[0].CanStart.In(mustZone(t, "Europe/Berlin")).Weekday(), "waves start inside the operation's window")
	sources := map[string]string{}
	for _, w := range v.Windows {
		sources[w.Window+"|"+w.Source] = w.Problem
		assert.EqualValues(t, 1, w.Devices)
	}
	assert.Contains(t, sources, "daily 00:00-24:00|tags")
	assert.Contains(t, sources, "Sun 02:00-04:00|operation")
	assert.Contains(t, sources["Someday 01:00-02:00|tags"], "unknown day")

	_, err = e.cli(ctx, "rollout", "start", "--firmware", "9.0.0", "--query", "SELECT * FROM devices", "--window-from-tags")
	require.Error(t, err)
	assert.Equal(t, 2, exitCodeOf(err))
}

func mustZone(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	require.NoError(t, err)
	return loc
}
