package workflows_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/internal/window"
	"github.com/fleetflow/fleetflow/workflows"
)

// windowFleet runs FirmwareRollout's real activities over a fleettest store whose devices install at once:
// before each observation every dispatched device reports the new version (or its job fails, for the
// devices in fails), and every rolling-back device its previous one. It records when each device was
// dispatched, on the workflow clock.
type windowFleet struct {
	mu      sync.Mutex
	env     *testsuite.TestWorkflowEnvironment
	store   *fleettest.Store
	acts    *activities.Activities
	rollout string
	version string
	fails   map[string]bool
	// dispatchedAt and rollbackAt are when a device left queued, and when it was sent back.
	dispatchedAt map[string]time.Time
	rollbackAt   map[string]time.Time
	passes       []workflows.RolloutDispatchResult
}

func newWindowFleet(id string, tags []string) *windowFleet {
	store := fleettest.New()
	store.FirmwareURL["2.3.0"] = "https://fw.example/2.3.0.bin"
	store.FirmwareURL["2.4.0"] = "https://fw.example/2.4.0.bin"
	for i, t := range tags {
		dev := fmt.Sprintf("dev-%05d", i)
		store.AddDevice(dev, fleettest.Device{Tags: []byte(t), ReportedVersion: "2.3.0"})
		store.AddRow(fleettest.RolloutRow{Rollout: id, DeviceID: dev})
	}
	return &windowFleet{store: store, acts: &activities.Activities{Rollouts: store}, rollout: id, version: "2.4.0",
		fails: map[string]bool{}, dispatchedAt: map[string]time.Time{}, rollbackAt: map[string]time.Time{}}
}

func (f *windowFleet) register(env *testsuite.TestWorkflowEnvironment) {
	f.mu.Lock()
	f.env = env
	f.mu.Unlock()
	env.RegisterWorkflow(workflows.FirmwareRollout)
	reg := func(fn any, name string) { env.RegisterActivityWithOptions(fn, activity.RegisterOptions{Name: name}) }
	reg(func(ctx context.Context, in workflows.RolloutDispatchInput) (workflows.RolloutDispatchResult, error) {
		res, err := f.acts.RolloutDispatch(ctx, in)
		f.mu.Lock()
		defer f.mu.Unlock()
		f.passes = append(f.passes, res)
		f.store.Mu.Lock()
		defer f.store.Mu.Unlock()
		for _, r := range f.store.Rows {
			if _, seen := f.dispatchedAt[r.DeviceID]; !seen && r.Phase == rollout.Dispatched {
				f.dispatchedAt[r.DeviceID] = f.env.Now().UTC()
			}
		}
		return res, err
	}, workflows.ActivityName(workflows.Activities.RolloutDispatch))
	reg(func(ctx context.Context, in workflows.RolloutObserveInput) (workflows.RolloutObserveResult, error) {
		f.mu.Lock()
		f.store.Mu.Lock()
		for _, r := range f.store.Rows {
			d := f.store.Devices[r.DeviceID]
			switch {
			case r.Phase == rollout.Dispatched && f.fails[r.DeviceID]:
				d.JobStatus = map[string][2]string{f.rollout: {"failed", "flash write error"}}
			case r.Phase == rollout.Dispatched:
				d.ReportedVersion = f.version
			case r.Phase == rollout.RollingBack:
				d.ReportedVersion = r.PrevVersion
				if _, seen := f.rollbackAt[r.DeviceID]; !seen {
					f.rollbackAt[r.DeviceID] = f.env.Now().UTC()
				}
			}
		}
		f.store.Mu.Unlock()
		f.mu.Unlock()
		return f.acts.RolloutObserve(ctx, in)
	}, workflows.ActivityName(workflows.Activities.RolloutObserve))
	reg(f.acts.RolloutRollback, workflows.ActivityName(workflows.Activities.RolloutRollback))
	reg(f.acts.RolloutFinish, workflows.ActivityName(workflows.Activities.RolloutFinish))
}

func (f *windowFleet) row(dev string) fleettest.RolloutRow {
	f.store.Mu.Lock()
	defer f.store.Mu.Unlock()
	for _, r := range f.store.Rows {
		if r.DeviceID == dev {
			return *r
		}
	}
	return fleettest.RolloutRow{}
}

func windowRolloutIn(t *testing.T, id string, total int64, waves string, pol fleet.MaintenancePolicy) workflows.RolloutInput {
	t.Helper()
	in := rolloutIn(t, id, total)
	w, err := rollout.ParseWaves(waves)
	require.NoError(t, err)
	in.Waves, in.Maintenance = w, &pol
	in.PollInterval, in.ObserveFor = 10*time.Millisecond, 30*time.Second
	return in
}

// A wave whose devices have different maintenance windows dispatches each one inside its own window (or the
// operation's, for a device without one), waiting on durable timers; a device whose window does not open
// before the deadline is recorded as outside_window with the window, the deadline and the next opening;
// one whose window tag does not parse fails, naming the tags; the wave ends only when every device is
// decided, and the bake and the threshold count only the devices that were updated.
func TestFirmwareRolloutHonoursEachDevicesWindow(t *testing.T) {
	// testStart is Saturday 2025-03-01 12:00 UTC.
	f := newWindowFleet("ro-own", []string{
		`{"maintenance": "Sat 13:00-14:00", "timezone": "UTC"}`, // opens in an hour
		`{}`,                                   // the operation's: Sun 02:00 Berlin = 01:00 UTC
		`{"maintenance": "daily 00:00-24:00"}`, // open now
		`{"maintenance": "Mon 10:00-11:00", "timezone": "Asia/Tokyo"}`,    // Monday 01:00 UTC: after the deadline
		`{"maintenance": "Someday 10:00-11:00"}`,                          // does not parse
		`{"maintenance": "Sat 18:30-19:00", "timezone": "Europe/Berlin"}`, // 17:30 UTC
	})
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.SetStartTime(testStart)
	env.SetTestTimeout(30 * time.Second)
	f.register(env)
	deadline := testStart.Add(36 * time.Hour)
	in := windowRolloutIn(t, "ro-own", 6, "100%", fleet.MaintenancePolicy{Window: "Sun 02:00-04:00", Timezone: "Europe/Berlin",
		WindowTag: "maintenance", TimezoneTag: "timezone", Deadline: deadline})
	in.MaxFailures = rollout.Threshold{Count: 1} // the device whose tags do not parse fails, and is tolerated
	env.ExecuteWorkflow(workflows.FirmwareRollout, in)
	res := rolloutResult(t, env)
	require.Equal(t, "completed", res.State, "decision: %s", res.Decision)
	assert.Equal(t, rollout.Counts{Succeeded: 4, Failed: 1, OutsideWindow: 1}, res.Counts)

	f.mu.Lock()
	defer f.mu.Unlock()
	assert.Equal(t, map[string]time.Time{
		"dev-00000": testStart.Add(time.Hour),
		"dev-00001": time.Date(2025, 3, 2, 1, 0, 0, 0, time.UTC),
		"dev-00002": testStart,
		"dev-00005": time.Date(2025, 3, 1, 17, 30, 0, 0, time.UTC),
	}, f.dispatchedAt, "each device is dispatched when its window opens")
	outside := f.row("dev-00003")
	assert.Equal(t, rollout.OutsideWindow, outside.Phase)
	assert.Equal(t, 0, outside.Wave, "recorded in its wave")
	assert.Contains(t, outside.Reason, "maintenance window Mon 10:00-11:00 Asia/Tokyo does not open before the operation's deadline 2025-03-03T00:00:00Z")
	assert.Contains(t, outside.Reason, "next opening 2025-03-03T01:00:00Z")
	bad := f.row("dev-00004")
	assert.Equal(t, rollout.Failed, bad.Phase)
	assert.Contains(t, bad.Reason, "tags maintenance/timezone")
	assert.Contains(t, res.Decision, "wave 1/1 (100%) done: 4 succeeded, 1 failed, 0 skipped, 1 outside their maintenance window")
	assert.Empty(t, f.store.RollbackCalls, "no rollback")
	require.Len(t, f.store.Finished, 1)
}

// A rollback does not wait for maintenance windows: when a device dispatched in its window fails beyond the
// threshold, every touched device is sent back at once, and the devices still waiting for their window are
// never dispatched — they end cancelled.
func TestFirmwareRolloutRollsBackWithoutWaitingForWindows(t *testing.T) {
	f := newWindowFleet("ro-rb", []string{
		`{"maintenance": "daily 00:00-24:00"}`, // open now, succeeds
		`{"maintenance": "daily 00:00-24:00"}`, // open now, fails
		`{"maintenance": "Sat 20:00-21:00"}`,   // opens in 8 hours
		`{"maintenance": "Sun 20:00-21:00"}`,   // opens tomorrow
	})
	f.fails["dev-00001"] = true
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.SetStartTime(testStart)
	env.SetTestTimeout(30 * time.Second)
	f.register(env)
	in := windowRolloutIn(t, "ro-rb", 4, "100%", fleet.MaintenancePolicy{WindowTag: "maintenance", TimezoneTag: "timezone",
		Deadline: testStart.Add(7 * 24 * time.Hour)})
	in.MaxFailures = rollout.Threshold{}
	env.ExecuteWorkflow(workflows.FirmwareRollout, in)
	res := rolloutResult(t, env)
	require.Equal(t, "rolled_back", res.State, "decision: %s", res.Decision)
	assert.Equal(t, rollout.Counts{RolledBack: 2, Cancelled: 2}, res.Counts)

	f.mu.Lock()
	defer f.mu.Unlock()
	assert.Equal(t, map[string]time.Time{"dev-00000": testStart, "dev-00001": testStart}, f.dispatchedAt)
	require.Len(t, f.rollbackAt, 2)
	for dev, at := range f.rollbackAt {
		assert.True(t, at.Before(testStart.Add(time.Minute)), "%s rolled back at %s, not at a window", dev, at)
	}
	assert.True(t, env.Now().Before(testStart.Add(time.Hour)), "the rollout ended at %s without waiting for the later windows", env.Now())
	for _, dev := range []string{"dev-00002", "dev-00003"} {
		assert.Equal(t, rollout.Cancelled, f.row(dev).Phase, dev)
	}
	assert.Equal(t, "flash write error", f.row("dev-00001").Reason[len(f.row("dev-00001").Reason)-len("flash write error"):])
}

// With devices' own windows the rollout's history stays bounded: 10,000 devices in 25 windows spread over
// the day (and a few after the deadline) roll out in four waves, each device dispatched inside its window,
// in runs that continue as new in the middle of a wave's wait and carry the waiting devices with them.
func TestFirmwareRolloutWithDeviceWindowsKeepsEveryRunSmall(t *testing.T) {
	const total = 10000
	tags := make([]string, total)
	for i := range tags {
		h := i % 25
		if h == 24 {
			tags[i] = `{"maintenance": "Fri 20:00-21:00"}` // after the deadline
			continue
		}
		tags[i] = fmt.Sprintf(`{"maintenance": "daily %02d:00-%02d:30", "timezone": "America/New_York"}`, h, h)
	}
	f := newWindowFleet("ro-10k", tags)
	deadline := testStart.Add(6 * 24 * time.Hour) // Friday 12:00 UTC: each wave may take a day
	in := windowRolloutIn(t, "ro-10k", total, "1%,10%,50%,100%", fleet.MaintenancePolicy{WindowTag: "maintenance",
		TimezoneTag: "timezone", Deadline: deadline})
	in.ContinueAfterEvents = 400
	dc := converter.GetDefaultDataConverter()
	now := testStart
	var res workflows.RolloutResult
	var runs []int
	for run := 1; ; run++ {
		require.LessOrEqual(t, run, 40, "the rollout should end within a few runs")
		var s testsuite.WorkflowTestSuite
		env := s.NewTestWorkflowEnvironment()
		env.SetStartTime(now)
		env.SetTestTimeout(2 * time.Minute)
		f.register(env)
		c := &runCounter{}
		c.listen(env)
		// The test environment's history length only moves when set: make it the estimate, so that the
		// workflow's continue-as-new rule sees what a server would report.
		env.SetOnActivityCompletedListener(func(*activity.Info, converter.EncodedValue, error) {
			c.mu.Lock()
			n := runEvents(c.activities, c.timers)
			c.mu.Unlock()
			env.SetCurrentHistoryLength(n)
		})
		env.ExecuteWorkflow(workflows.FirmwareRollout, in)
		require.True(t, env.IsWorkflowCompleted())
		events := runEvents(c.activities, c.timers)
		require.Less(t, events, eventBudget, "run %d: %d activities, %d timers", run, c.activities, c.timers)
		runs = append(runs, events)
		now = env.Now()
		err := env.GetWorkflowError()
		var can *workflow.ContinueAsNewError
		if !errors.As(err, &can) {
			require.NoError(t, err)
			require.NoError(t, env.GetWorkflowResult(&res))
			break
		}
		require.NoError(t, dc.FromPayloads(can.Input, &in))
	}
	require.Greater(t, len(runs), 2, "the rollout continues as new (events per run: %v)", runs)
	require.Equal(t, "completed", res.State, "decision: %s", res.Decision)
	assert.Equal(t, rollout.Counts{Succeeded: total - total/25, OutsideWindow: total / 25}, res.Counts)

	f.mu.Lock()
	defer f.mu.Unlock()
	require.Len(t, f.dispatchedAt, total-total/25)
	for dev, at := range f.dispatchedAt {
		var i int
		_, err := fmt.Sscanf(dev, "dev-%d", &i)
		require.NoError(t, err)
		w, err := window.Parse(fmt.Sprintf("daily %02d:00-%02d:30", i%25, i%25), "America/New_York")
		require.NoError(t, err)
		require.True(t, w.Open(at), "%s dispatched at %s, outside its window %s", dev, at, w)
	}
	t.Logf("10,000 devices in 25 windows: %d runs, events per run %v, %d dispatch passes", len(runs), runs, len(f.passes))
}

// A pause holds the devices still waiting for their window: a window that opens while the rollout is paused
// dispatches nothing until it is resumed (if the window is still open then); an abort ends the wait at once.
func TestFirmwareRolloutPauseAndAbortHoldDevicesWaitingForTheirWindow(t *testing.T) {
	f := newWindowFleet("ro-pause", []string{
		`{"maintenance": "daily 00:00-24:00"}`, // open now
		`{"maintenance": "Sat 13:00-16:00"}`,   // opens in an hour
		`{"maintenance": "Sun 13:00-14:00"}`,   // opens tomorrow
	})
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.SetStartTime(testStart)
	env.SetTestTimeout(30 * time.Second)
	f.register(env)
	in := windowRolloutIn(t, "ro-pause", 3, "100%", fleet.MaintenancePolicy{WindowTag: "maintenance", TimezoneTag: "timezone",
		Deadline: testStart.Add(7 * 24 * time.Hour)})
	var pause, resume, abort *updateRecord
	env.RegisterDelayedCallback(func() { pause = sendUpdate(env, workflows.UpdatePause) }, 30*time.Minute)
	var waitingWhilePaused workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { waitingWhilePaused = queryRollout(t, env) }, 90*time.Minute)
	env.RegisterDelayedCallback(func() { resume = sendUpdate(env, workflows.UpdateResume) }, 2*time.Hour)
	env.RegisterDelayedCallback(func() {
		abort = sendUpdate(env, workflows.UpdateAbort, workflows.AbortInput{Reason: "stop here"})
	}, 5*time.Hour)
	env.ExecuteWorkflow(workflows.FirmwareRollout, in)
	res := rolloutResult(t, env)
	requireAccepted(t, pause)
	requireAccepted(t, resume)
	requireAccepted(t, abort)
	assert.Equal(t, "aborted", res.State)
	assert.Equal(t, "paused", waitingWhilePaused.State, "the window opened during the pause")
	assert.EqualValues(t, 2, waitingWhilePaused.WindowWaiting, "the progress says how many devices wait")
	assert.Equal(t, testStart.Add(time.Hour), waitingWhilePaused.NextOpen.UTC())

	f.mu.Lock()
	defer f.mu.Unlock()
	assert.Equal(t, map[string]time.Time{"dev-00000": testStart, "dev-00001": testStart.Add(2 * time.Hour)}, f.dispatchedAt,
		"the device whose window opened during the pause waits for the resume")
	assert.Equal(t, rollout.Cancelled, f.row("dev-00002").Phase, "the abort cancels the device still waiting")
	assert.True(t, env.Now().Before(testStart.Add(6*time.Hour)), "the abort ended the wait for tomorrow's window (now %s)", env.Now())
}
