package workflows_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
	"github.com/fleetflow/fleetflow/workflows"
)

// testStart is the workflow clock at the start of every test run, so that times in assertions are offsets
// from a fixed instant.
var testStart = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// Job target states, as the registry's job_devices rows have them.
// jobFleet runs FleetJob's activities for real (activities.Activities) over the one fake store
// (fleettest.Store), on a fleet of len(online) devices d0, d1, …, which are the job's targets in seq order.
// Only the devices are scripted: which are online, which acknowledge a desired change, and how many per
// JobCollectAcks call. Nothing depends on the wall clock, only on requests and call order.
type jobFleet struct {
	mu       sync.Mutex
	env      *testsuite.TestWorkflowEnvironment
	store    *fleettest.Store
	acts     *activities.Activities
	online   []bool
	neverAck []bool // online devices that never acknowledge a desired change
	// ackPerPoll is how many online devices acknowledge per JobCollectAcks call.
	ackPerPoll int
	// batchLag and ackLag are the workflow time a mocked activity waits before its function runs, so that
	// batchAt and ackAt are when the activity started.
	batchLag, ackLag time.Duration

	batches []workflows.JobBatchInput
	batchAt []time.Time
	acks    []workflows.JobCollectAcksInput
	ackAt   []time.Time
	creates []workflows.JobCreateInput
	// loseCreate makes the first JobCreate attempt fail after the store created the job, as a worker
	// crash between the commit and the activity's completion would.
	loseCreate bool
	closes     []workflows.JobCloseInput
	closeAt    []time.Time
	closedRet  fleet.JobCounts
}

func newJobFleet(total int) *jobFleet {
	f := &jobFleet{store: fleettest.New(), online: make([]bool, total), neverAck: make([]bool, total), ackPerPoll: total}
	for i := range f.online {
		f.online[i] = true
	}
	f.acts = &activities.Activities{Jobs: f.store, Channel: deviceChannel{f}}
	return f
}

func devID(i int) string { return fmt.Sprintf("d%d", i) }

// freeze creates the devices and the job's target set on first use (tests script the devices before the
// workflow starts).
func (f *jobFleet) freeze(job string) {
	if len(f.store.Targets[job]) > 0 {
		return
	}
	ids := make([]string, len(f.online))
	for i := range ids {
		ids[i] = devID(i)
		f.store.AddDevice(ids[i], fleettest.Device{Online: f.online[i]})
	}
	f.store.AddJob(job, ids...)
}

func (f *jobFleet) batch(ctx context.Context, r workflows.JobBatchInput) (fleet.JobCounts, error) {
	f.mu.Lock()
	f.freeze(r.JobID)
	f.batches = append(f.batches, r)
	f.batchAt = append(f.batchAt, f.env.Now().Add(-f.batchLag))
	f.mu.Unlock()
	return f.acts.JobBatch(ctx, r)
}

// collectAcks lets up to ackPerPoll online devices report what desired holds, then collects the
// acknowledgements once (the real activity polls on the wall clock, which a workflow test does not run).
func (f *jobFleet) collectAcks(ctx context.Context, r workflows.JobCollectAcksInput) (workflows.JobCollectAcksResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.acks = append(f.acks, r)
	f.ackAt = append(f.ackAt, f.env.Now().Add(-f.ackLag))
	reported := 0
	for i, t := range f.store.Targets[r.JobID] {
		if t.State == fleet.JobRunning && f.online[i] && !f.neverAck[i] && reported < f.ackPerPoll {
			d := f.store.Devices[t.DeviceID]
			d.Reported = d.Desired
			reported++
		}
	}
	p, err := f.store.CollectAcks(ctx, r.JobID, r.Keys)
	return workflows.JobCollectAcksResult{Acked: p.Acked, Waiting: p.Waiting, WaitingOnline: p.WaitingOnline}, err
}

func (f *jobFleet) create(ctx context.Context, r workflows.JobCreateInput) (workflows.JobCreateResult, error) {
	f.mu.Lock()
	f.creates = append(f.creates, r)
	lose := f.loseCreate && len(f.creates) == 1
	f.mu.Unlock()
	res, err := f.acts.JobCreate(ctx, r)
	if err == nil && lose {
		return workflows.JobCreateResult{}, errors.New("connection reset after commit")
	}
	return res, err
}

func (f *jobFleet) close(ctx context.Context, r workflows.JobCloseInput) (fleet.JobCounts, error) {
	f.mu.Lock()
	f.freeze(r.JobID)
	f.closes = append(f.closes, r)
	f.closeAt = append(f.closeAt, f.env.Now())
	f.mu.Unlock()
	c, err := f.acts.JobClose(ctx, r)
	f.mu.Lock()
	f.closedRet = c
	f.mu.Unlock()
	return c, err
}

// deviceChannel answers methods as the fleet's devices would: offline devices are not reached, online ones
// answer 200. Desired pushes are accepted.
type deviceChannel struct{ f *jobFleet }

func (c deviceChannel) PublishDesired(_ context.Context, pushes []fleet.DesiredPush) (int, error) {
	return len(pushes), nil
}

func (c deviceChannel) InvokeMany(_ context.Context, calls []fleet.MethodCall, _ time.Duration, _ float64) []fleet.MethodResult {
	out := make([]fleet.MethodResult, len(calls))
	for i, call := range calls {
		out[i] = fleet.MethodResult{DeviceID: call.DeviceID, Outcome: fleet.MethodSucceeded, Status: 200, Payload: []byte("{}")}
		var n int
		if _, err := fmt.Sscanf(call.DeviceID, "d%d", &n); err == nil && !c.f.online[n] {
			out[i] = fleet.MethodResult{DeviceID: call.DeviceID, Outcome: fleet.MethodOffline, Status: 404}
		}
	}
	return out
}

// batchRanges returns the [First, Last) ranges of the batches seen, in target order.
func (f *jobFleet) batchRanges() [][2]int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([][2]int64, len(f.batches))
	for i, b := range f.batches {
		out[i] = [2]int64{b.First, b.Last}
	}
	sort.Slice(out, func(i, j int) bool { return out[i][0] < out[j][0] })
	return out
}

func (f *jobFleet) closeStates() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.closes {
		out = append(out, string(c.State))
	}
	return out
}

// newJobEnv is a test environment running FleetJob against f. batchDelay > 0 makes every JobBatch take that
// long in workflow time; ackDelay > 0 does the same for JobCollectAcks (a real one waits up to MaxWait).
func newJobEnv(t *testing.T, f *jobFleet, batchDelay, ackDelay time.Duration) *testsuite.TestWorkflowEnvironment {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	f.env = env
	env.SetStartTime(testStart)
	env.SetTestTimeout(10 * time.Second)
	env.RegisterWorkflow(workflows.FleetJob)
	env.RegisterWorkflow(workflows.Decommission)
	env.RegisterActivityWithOptions(f.create, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.JobCreate)})
	env.RegisterActivityWithOptions(f.batch, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.JobBatch)})
	env.RegisterActivityWithOptions(f.collectAcks, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.JobCollectAcks)})
	env.RegisterActivityWithOptions(f.close, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.JobClose)})
	f.batchLag, f.ackLag = batchDelay, ackDelay
	if batchDelay > 0 {
		env.OnActivity(workflows.ActivityName(workflows.Activities.JobBatch), mock.Anything, mock.Anything).Return(f.batch).After(batchDelay)
	}
	if ackDelay > 0 {
		env.OnActivity(workflows.ActivityName(workflows.Activities.JobCollectAcks), mock.Anything, mock.Anything).Return(f.collectAcks).After(ackDelay)
	}
	return env
}

// updateRecord is what happened to one Workflow Update sent by a test.
type updateRecord struct {
	name      string
	accepted  bool
	rejected  bool
	rejectErr error
	completed bool
	result    any
	err       error
}

// sendUpdate sends an update to the running workflow and records the outcome; read it after ExecuteWorkflow
// returns.
func sendUpdate(env *testsuite.TestWorkflowEnvironment, name string, args ...any) *updateRecord {
	r := &updateRecord{name: name}
	env.UpdateWorkflow(name, "", &testsuite.TestUpdateCallback{
		OnAccept: func() { r.accepted = true },
		OnReject: func(err error) { r.rejected, r.rejectErr = true, err },
		OnComplete: func(v any, err error) {
			r.completed, r.result, r.err = true, v, err
		},
	}, args...)
	return r
}

func requireAccepted(t *testing.T, u *updateRecord) {
	t.Helper()
	require.NotNil(t, u, "the update was never sent")
	require.False(t, u.rejected, "%s was refused: %v", u.name, u.rejectErr)
	require.True(t, u.accepted, "%s was not accepted", u.name)
	require.True(t, u.completed, "%s did not complete", u.name)
	require.NoError(t, u.err)
}

func requireRejected(t *testing.T, u *updateRecord, contains string) {
	t.Helper()
	require.NotNil(t, u, "the update was never sent")
	require.True(t, u.rejected, "%s should have been refused by its validator", u.name)
	require.False(t, u.accepted)
	require.ErrorContains(t, u.rejectErr, contains)
}

func jobResult(t *testing.T, env *testsuite.TestWorkflowEnvironment) workflows.JobResult {
	t.Helper()
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var res workflows.JobResult
	require.NoError(t, env.GetWorkflowResult(&res))
	return res
}

func TestFleetJobSetTagsBatchesTheTargetSetAndClosesCompleted(t *testing.T) {
	f := newJobFleet(2500)
	env := newJobEnv(t, f, 0, 0)
	patch := json.RawMessage(`{"site":"berlin"}`)
	env.ExecuteWorkflow(workflows.FleetJob, workflows.JobInput{JobID: "job-tags", Kind: fleet.JobSetTags, Total: 2500,
		BatchSize: 1000, Patch: patch})
	res := jobResult(t, env)

	require.Equal(t, [][2]int64{{0, 1000}, {1000, 2000}, {2000, 2500}}, f.batchRanges())
	for _, b := range f.batches {
		require.Equal(t, "job-tags", b.JobID)
		require.Equal(t, fleet.JobSetTags, b.Kind)
		require.JSONEq(t, string(patch), string(b.Patch))
	}
	require.Empty(t, f.acks, "a tags job has nothing to acknowledge")
	require.Empty(t, f.creates, "an input with a Total (created before the workflow, as recorded histories have it) creates nothing")
	require.Equal(t, []workflows.JobCloseInput{{JobID: "job-tags", State: "completed"}}, f.closes)
	require.Equal(t, "completed", res.State)
	require.Equal(t, f.closedRet, res.Counts, "the result's counts are the registry's, returned by JobClose")
	require.Equal(t, fleet.JobCounts{Succeeded: 2500}, res.Counts)
	require.Equal(t, int64(2500), res.Total)
	require.Equal(t, 1, res.Runs)
}

func TestFleetJobSetDesiredPollsAcknowledgementsUntilNoneIsWaiting(t *testing.T) {
	f := newJobFleet(1000)
	f.ackPerPoll = 400
	env := newJobEnv(t, f, 0, time.Second)
	keys := []string{"telemetryInterval"}
	env.ExecuteWorkflow(workflows.FleetJob, workflows.JobInput{JobID: "job-desired", Kind: fleet.JobSetDesired, Total: 1000,
		Patch: json.RawMessage(`{"telemetryInterval":30}`), AckKeys: keys, Timeout: 10 * time.Minute})
	res := jobResult(t, env)

	require.Equal(t, [][2]int64{{0, 1000}}, f.batchRanges())
	require.Len(t, f.acks, 3, "400 + 400 + 200 acknowledgements: polled until none is waiting")
	for i, a := range f.acks {
		require.Equal(t, "job-desired", a.JobID)
		require.Equal(t, keys, a.Keys)
		require.Greater(t, a.MaxWait, time.Duration(0), "poll %d", i)
		require.LessOrEqual(t, a.MaxWait, 10*time.Second, "poll %d", i)
		require.False(t, f.ackAt[i].Before(f.batchAt[0]), "acknowledgements are collected after the batches")
	}
	require.Equal(t, []string{"completed"}, f.closeStates())
	require.Equal(t, "completed", res.State)
	require.Equal(t, fleet.JobCounts{Succeeded: 1000}, res.Counts)
}

func TestFleetJobSetDesiredStopsWaitingWhenOnlyOfflineDevicesRemain(t *testing.T) {
	f := newJobFleet(1000)
	for s := 600; s < 1000; s++ {
		f.online[s] = false // these get the desired state when they reconnect
	}
	env := newJobEnv(t, f, 0, time.Second)
	timeout := 30 * time.Minute
	env.ExecuteWorkflow(workflows.FleetJob, workflows.JobInput{JobID: "job-offline", Kind: fleet.JobSetDesired, Total: 1000,
		Patch: json.RawMessage(`{"mode":"eco"}`), AckKeys: []string{"mode"}, Timeout: timeout})
	res := jobResult(t, env)

	require.Less(t, len(f.acks), 10, "all waiting devices are offline: the job waits out only the short grace for connection state")
	require.Len(t, f.closeAt, 1)
	require.Less(t, f.closeAt[0].Sub(f.batchAt[0]), time.Minute, "the job must not sit out its %s timeout", timeout)
	require.Equal(t, int64(600), res.Counts.Succeeded)
	require.Equal(t, int64(400), res.Counts.Offline)
}

// Devices that are online but never acknowledge are waited for until the job's Timeout, then the job ends;
// the registry marks them timed_out. The job's state must agree with those counts.
func TestFleetJobSetDesiredGivesUpOnSilentDevicesAtTheTimeout(t *testing.T) {
	f := newJobFleet(100)
	for s := 90; s < 100; s++ {
		f.neverAck[s] = true
	}
	env := newJobEnv(t, f, 0, time.Second)
	timeout := time.Minute
	env.ExecuteWorkflow(workflows.FleetJob, workflows.JobInput{JobID: "job-silent", Kind: fleet.JobSetDesired, Total: 100,
		Patch: json.RawMessage(`{"mode":"eco"}`), AckKeys: []string{"mode"}, Timeout: timeout})
	res := jobResult(t, env)

	require.GreaterOrEqual(t, len(f.acks), 2, "online devices are still waiting: keep polling")
	require.Len(t, f.closeAt, 1)
	waited := f.closeAt[0].Sub(f.batchAt[0])
	require.GreaterOrEqual(t, waited, timeout, "online devices get the whole timeout to acknowledge")
	require.Less(t, waited, timeout+15*time.Second, "but not much more")
	require.Equal(t, fleet.JobCounts{Succeeded: 90, TimedOut: 10}, res.Counts)
	// Ten devices did not acknowledge in time (the result's own counts say TimedOut 10), so the job did not
	// simply complete.
	assert.Equal(t, "completed_with_failures", res.State, "state must agree with the counts JobClose returned")
	assert.Equal(t, []string{"completed_with_failures"}, f.closeStates(), "the registry must be told the same state")
}

// Rate caps devices per second: batches go out one at a time, and the next batch starts no sooner than the
// previous batch's devices are allowed by the rate.
func TestFleetJobMethodRateSpacesBatches(t *testing.T) {
	for _, tc := range []struct {
		name      string
		rate      float64
		total     int
		batchSize int64
		ranges    [][2]int64
	}{
		{"100/s over 300", 100, 300, 0, [][2]int64{{0, 100}, {100, 200}, {200, 300}}},
		{"50/s over 120", 50, 120, 0, [][2]int64{{0, 50}, {50, 100}, {100, 120}}},
		{"batch below the rate", 100, 100, 40, [][2]int64{{0, 40}, {40, 80}, {80, 100}}},
		{"below one device a second", 0.5, 3, 0, [][2]int64{{0, 1}, {1, 2}, {2, 3}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newJobFleet(tc.total)
			env := newJobEnv(t, f, 0, 0)
			env.ExecuteWorkflow(workflows.FleetJob, workflows.JobInput{JobID: "job-reboot", Kind: fleet.JobMethod,
				Total: int64(tc.total), Method: "reboot", Payload: json.RawMessage(`{"delay":5}`), Rate: tc.rate, BatchSize: tc.batchSize})
			res := jobResult(t, env)

			require.Equal(t, tc.ranges, f.batchRanges())
			for i, b := range f.batches {
				require.Equal(t, "reboot", b.Method)
				require.Equal(t, workflows.DefaultMethodTimeout, b.Timeout)
				if i == 0 {
					continue
				}
				prev := f.batches[i-1]
				gap := f.batchAt[i].Sub(f.batchAt[i-1])
				minGap := time.Duration(float64(prev.Last-prev.First) / tc.rate * float64(time.Second))
				require.GreaterOrEqual(t, gap, minGap, "batch %d: %d devices at %g/s need %s", i, prev.Last-prev.First, tc.rate, minGap)
				require.Less(t, gap, minGap+time.Second, "batch %d: the rate is a cap, not a slowdown", i)
			}
			require.Equal(t, "completed", res.State)
			require.Equal(t, int64(tc.total), res.Counts.Succeeded)
		})
	}
}

func TestFleetJobPauseStopsDispatchUntilResume(t *testing.T) {
	f := newJobFleet(5000)
	env := newJobEnv(t, f, time.Minute, 0)
	var early, pause, pauseAgain, resume *updateRecord
	var paused workflows.JobProgress
	var batchesWhilePaused int
	env.RegisterDelayedCallback(func() { early = sendUpdate(env, workflows.UpdateResume) }, 30*time.Second)
	env.RegisterDelayedCallback(func() { pause = sendUpdate(env, workflows.UpdatePause) }, 90*time.Second)
	env.RegisterDelayedCallback(func() { pauseAgain = sendUpdate(env, workflows.UpdatePause) }, 100*time.Second)
	env.RegisterDelayedCallback(func() {
		v, err := env.QueryWorkflow(workflows.QueryProgress)
		require.NoError(t, err)
		require.NoError(t, v.Get(&paused))
		f.mu.Lock()
		batchesWhilePaused = len(f.batches)
		f.mu.Unlock()
	}, 5*time.Minute)
	env.RegisterDelayedCallback(func() { resume = sendUpdate(env, workflows.UpdateResume) }, 10*time.Minute)
	env.ExecuteWorkflow(workflows.FleetJob, workflows.JobInput{JobID: "job-pause", Kind: fleet.JobSetTags, Total: 5000,
		BatchSize: 1000, Window: 1, Patch: json.RawMessage(`{"a":1}`)})
	res := jobResult(t, env)

	requireRejected(t, early, "is not paused")
	requireAccepted(t, pause)
	requireRejected(t, pauseAgain, "already paused")
	requireAccepted(t, resume)

	require.Equal(t, "paused", paused.State)
	require.Equal(t, int64(2000), paused.Dispatched, "the batch in flight at the pause finishes, no other starts")
	require.Equal(t, int64(2000), paused.Counts.Succeeded)
	require.Equal(t, 2, batchesWhilePaused)

	require.Equal(t, [][2]int64{{0, 1000}, {1000, 2000}, {2000, 3000}, {3000, 4000}, {4000, 5000}}, f.batchRanges())
	var at []time.Duration
	for _, ts := range f.batchAt {
		at = append(at, ts.Sub(testStart))
	}
	require.Equal(t, []time.Duration{0, time.Minute, 10 * time.Minute, 11 * time.Minute, 12 * time.Minute}, at,
		"no batch between the pause (1m30s) and the resume (10m)")
	require.Equal(t, "completed", res.State)
	require.Equal(t, []string{"completed"}, f.closeStates())
}

func TestFleetJobCancel(t *testing.T) {
	for _, tc := range []struct {
		name        string
		pauseFirst  bool
		cancelAt    time.Duration
		wantCloseAt time.Duration
	}{
		{"while running", false, 90 * time.Second, 2 * time.Minute}, // the batch in flight finishes
		{"while paused", true, 5 * time.Minute, 5 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newJobFleet(5000)
			env := newJobEnv(t, f, time.Minute, 0)
			var pause, cancel, cancelAgain *updateRecord
			if tc.pauseFirst {
				env.RegisterDelayedCallback(func() { pause = sendUpdate(env, workflows.UpdatePause) }, 90*time.Second)
			}
			env.RegisterDelayedCallback(func() { cancel = sendUpdate(env, workflows.UpdateCancel) }, tc.cancelAt)
			env.RegisterDelayedCallback(func() { cancelAgain = sendUpdate(env, workflows.UpdateCancel) }, tc.cancelAt)
			env.ExecuteWorkflow(workflows.FleetJob, workflows.JobInput{JobID: "job-cancel", Kind: fleet.JobSetTags, Total: 5000,
				BatchSize: 1000, Window: 1, Patch: json.RawMessage(`{"a":1}`)})
			res := jobResult(t, env)

			if tc.pauseFirst {
				requireAccepted(t, pause)
			}
			requireAccepted(t, cancel)
			requireRejected(t, cancelAgain, "already being cancelled")
			require.Equal(t, [][2]int64{{0, 1000}, {1000, 2000}}, f.batchRanges(), "no batch starts after the cancel")
			require.Equal(t, []workflows.JobCloseInput{{JobID: "job-cancel", State: "cancelled"}}, f.closes)
			require.Equal(t, tc.wantCloseAt, f.closeAt[0].Sub(testStart))
			require.Equal(t, "cancelled", res.State)
			require.Equal(t, fleet.JobCounts{Succeeded: 2000, Cancelled: 3000}, res.Counts,
				"targets never reached are cancelled (counts from JobClose)")
		})
	}
}

func TestFleetJobPauseRefusedOnceEveryDeviceIsReached(t *testing.T) {
	f := newJobFleet(1000)
	env := newJobEnv(t, f, time.Minute, 0)
	var pause *updateRecord
	env.RegisterDelayedCallback(func() { pause = sendUpdate(env, workflows.UpdatePause) }, 30*time.Second)
	env.ExecuteWorkflow(workflows.FleetJob, workflows.JobInput{JobID: "job-one", Kind: fleet.JobSetTags, Total: 1000,
		Patch: json.RawMessage(`{"a":1}`)})
	res := jobResult(t, env)
	requireRejected(t, pause, "nothing left to pause")
	require.Equal(t, "completed", res.State)
}

func TestFleetJobContinuesAsNewWithItsCursorAndCounts(t *testing.T) {
	f := newJobFleet(5000)
	in := workflows.JobInput{JobID: "job-can", Kind: fleet.JobSetTags, Total: 5000, BatchSize: 1000, BatchesPerRun: 2,
		Patch: json.RawMessage(`{"a":1}`)}
	dc := converter.GetDefaultDataConverter()
	var nexts []int64
	var res workflows.JobResult
	for run := 1; ; run++ {
		require.LessOrEqual(t, run, 5, "the job should end within 3 runs")
		env := newJobEnv(t, f, 0, 0)
		env.ExecuteWorkflow(workflows.FleetJob, in)
		require.True(t, env.IsWorkflowCompleted())
		err := env.GetWorkflowError()
		var can *workflow.ContinueAsNewError
		if !errors.As(err, &can) {
			require.NoError(t, err)
			require.NoError(t, env.GetWorkflowResult(&res))
			break
		}
		require.Empty(t, f.closes, "the job is not closed before its last run")
		var next workflows.JobInput
		require.NoError(t, dc.FromPayloads(can.Input, &next))
		require.Equal(t, run, next.Runs)
		require.Equal(t, fleet.JobCounts{Succeeded: next.Next}, next.Counts, "the counts travel with the cursor")
		require.Equal(t, in.JobID, next.JobID)
		nexts = append(nexts, next.Next)
		in = next
	}
	require.Equal(t, []int64{2000, 4000}, nexts, "two batches per run")
	require.Equal(t, [][2]int64{{0, 1000}, {1000, 2000}, {2000, 3000}, {3000, 4000}, {4000, 5000}}, f.batchRanges())
	require.Equal(t, []string{"completed"}, f.closeStates())
	require.Equal(t, "completed", res.State)
	require.Equal(t, 3, res.Runs)
	require.Equal(t, fleet.JobCounts{Succeeded: 5000}, res.Counts)
}

func TestFleetJobRejectsInvalidInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   workflows.JobInput
	}{
		{"empty job id", workflows.JobInput{Kind: fleet.JobSetTags, Total: 10}},
		{"unknown kind", workflows.JobInput{JobID: "j", Kind: "set_everything", Total: 10}},
		{"no kind", workflows.JobInput{JobID: "j", Total: 10}},
		{"empty target set", workflows.JobInput{JobID: "j", Kind: fleet.JobSetTags}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newJobFleet(10)
			env := newJobEnv(t, f, 0, 0)
			env.ExecuteWorkflow(workflows.FleetJob, tc.in)
			requireInvalidInput(t, env)
			require.Empty(t, f.batches)
			require.Empty(t, f.closes)
		})
	}
}

// A cancel that arrives while the job is already being closed (JobClose running with state completed) must
// not be accepted and then ignored: either the validator refuses it, or the job ends cancelled.
func TestFleetJobCancelWhileClosing(t *testing.T) {
	f := newJobFleet(1000)
	env := newJobEnv(t, f, 0, 0)
	env.OnActivity(workflows.ActivityName(workflows.Activities.JobClose), mock.Anything, mock.Anything).Return(f.close).After(time.Minute)
	var cancel *updateRecord
	env.RegisterDelayedCallback(func() { cancel = sendUpdate(env, workflows.UpdateCancel) }, 30*time.Second)
	env.ExecuteWorkflow(workflows.FleetJob, workflows.JobInput{JobID: "job-closing", Kind: fleet.JobSetTags, Total: 1000,
		Patch: json.RawMessage(`{"a":1}`)})
	res := jobResult(t, env)

	require.NotNil(t, cancel)
	require.Equal(t, []string{"completed"}, f.closeStates(), "the close had started before the cancel")
	if cancel.accepted {
		assert.Equal(t, "cancelled", res.State, "cancel was accepted (%v) but the job ended %s", cancel.result, res.State)
	}
}

// requireInvalidInput asserts that the workflow ended with a non-retryable InvalidInput application error.
func requireInvalidInput(t *testing.T, env *testsuite.TestWorkflowEnvironment) {
	t.Helper()
	require.True(t, env.IsWorkflowCompleted())
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(env.GetWorkflowError(), &appErr), "got %v", env.GetWorkflowError())
	require.Equal(t, workflows.ErrTypeInvalidInput, appErr.Type())
	require.True(t, appErr.NonRetryable())
}
