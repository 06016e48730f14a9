package workflows_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/workflows"
)

// observeEvery is how long one RolloutObserve takes in workflow time in these tests (a real one polls for up
// to ObserveFor and returns when the wave is decided).
const observeEvery = 5 * time.Second

// fleetDevice is one device claimed by a rollout, by rank.
type fleetDevice struct {
	phase     rollout.Phase
	wave      int // -1 while queued
	bakeSince time.Time
	fails     bool // fails to install the new firmware
}

// rolloutFleet simulates a rollout's devices in memory. Its methods are the Rollout* activities: dispatch
// moves the queued devices ranked below the cutoff to dispatched; every forward observation moves each
// undecided device one step (dispatched → installing → baking, or failed for a failing device; baking →
// succeeded once the request's Policy.Bake has passed in workflow time); the rollback moves every touched
// device to rolling_back, and each rollback observation returns up to rollbackPerPoll of them. Everything is
// deterministic: the only clock is the test environment's.
type rolloutFleet struct {
	mu              sync.Mutex
	env             *testsuite.TestWorkflowEnvironment
	dev             []fleetDevice
	rollbackPerPoll int
	// histPerObserve > 0 simulates the history growing by that many events per observation, so that
	// ContinueAfterEvents is reached (the test environment's history length only moves when set).
	histPerObserve int
	runObserves    int

	dispatches []workflows.RolloutDispatchInput
	dispatchAt []time.Time
	observes   []workflows.RolloutObserveInput
	rollbacks  []workflows.RolloutRollbackInput
	finishes   []workflows.RolloutFinishInput
	// create answers RolloutCreate (nil: the test's inputs carry a Total and never call it).
	create   func(context.Context, workflows.RolloutCreateInput) (workflows.RolloutCreateResult, error)
	finishAt []time.Time
}

func newRolloutFleet(total int, failing ...int) *rolloutFleet {
	f := &rolloutFleet{dev: make([]fleetDevice, total), rollbackPerPoll: total}
	for i := range f.dev {
		f.dev[i] = fleetDevice{phase: rollout.Queued, wave: -1}
	}
	for _, r := range failing {
		f.dev[r].fails = true
	}
	return f
}

func (f *rolloutFleet) dispatch(_ context.Context, r workflows.RolloutDispatchInput) (workflows.RolloutDispatchResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dispatches = append(f.dispatches, r)
	f.dispatchAt = append(f.dispatchAt, f.env.Now())
	var res workflows.RolloutDispatchResult
	for i := 0; i < int(r.Cutoff) && i < len(f.dev); i++ {
		if d := &f.dev[i]; d.phase == rollout.Queued {
			d.phase, d.wave = rollout.Dispatched, r.Wave
			res.Dispatched++
			res.Pushed++
		}
	}
	return res, nil
}

func (f *rolloutFleet) observe(_ context.Context, r workflows.RolloutObserveInput) (workflows.RolloutObserveResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.observes = append(f.observes, r)
	f.runObserves++
	if f.histPerObserve > 0 {
		f.env.SetCurrentHistoryLength(f.runObserves * f.histPerObserve)
	}
	now := f.env.Now()
	if r.Rollback {
		n := 0
		for i := range f.dev {
			if d := &f.dev[i]; d.phase == rollout.RollingBack && n < f.rollbackPerPoll {
				d.phase = rollout.RolledBack
				n++
			}
		}
	} else {
		for i := range f.dev {
			switch d := &f.dev[i]; d.phase {
			case rollout.Dispatched:
				d.phase = rollout.Installing
			case rollout.Installing:
				if d.fails {
					d.phase = rollout.Failed
				} else {
					d.phase, d.bakeSince = rollout.Baking, now
				}
			case rollout.Baking:
				if now.Sub(d.bakeSince) >= r.Policy.Bake {
					d.phase = rollout.Succeeded
				}
			}
		}
	}
	return f.countsLocked(r.Wave), nil
}

func (f *rolloutFleet) countsLocked(wave int) workflows.RolloutObserveResult {
	var obs workflows.RolloutObserveResult
	for _, d := range f.dev {
		obs.Counts.Add(d.phase, 1)
		if d.wave == wave {
			obs.Wave.Add(d.phase, 1)
		}
	}
	return obs
}

func (f *rolloutFleet) rollback(_ context.Context, r workflows.RolloutRollbackInput) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rollbacks = append(f.rollbacks, r)
	var n int64
	for i := range f.dev {
		if d := &f.dev[i]; d.phase.Touched() {
			d.phase = rollout.RollingBack
			n++
		}
	}
	return n, nil
}

func (f *rolloutFleet) finish(_ context.Context, r workflows.RolloutFinishInput) (workflows.RolloutFinishResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.finishes = append(f.finishes, r)
	f.finishAt = append(f.finishAt, f.env.Now())
	res := workflows.RolloutFinishResult{Counts: f.countsLocked(-2).Counts}
	for i, d := range f.dev {
		if d.fails && d.phase == rollout.Failed {
			res.Failures = append(res.Failures, workflows.DeviceIssue{DeviceID: fmt.Sprintf("dev-%03d", i), Wave: d.wave + 1,
				Phase: string(d.phase), Reason: "install failed"})
		}
	}
	return res, nil
}

// dispatched is the sequence of (wave, cutoff) pairs RolloutDispatch was called with.
func (f *rolloutFleet) dispatched() [][2]int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([][2]int64, len(f.dispatches))
	for i, d := range f.dispatches {
		out[i] = [2]int64{int64(d.Wave), d.Cutoff}
	}
	return out
}

func (f *rolloutFleet) finishStates() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.finishes {
		out = append(out, string(r.State))
	}
	return out
}

// observations returns the observation requests of one direction (forward or rollback).
func (f *rolloutFleet) observations(rollback bool) []workflows.RolloutObserveInput {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []workflows.RolloutObserveInput
	for _, o := range f.observes {
		if o.Rollback == rollback {
			out = append(out, o)
		}
	}
	return out
}

// newRolloutEnv is a test environment running FirmwareRollout against f.
func newRolloutEnv(t *testing.T, f *rolloutFleet) *testsuite.TestWorkflowEnvironment {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	f.mu.Lock()
	f.env, f.runObserves = env, 0
	f.mu.Unlock()
	env.SetStartTime(testStart)
	env.SetTestTimeout(10 * time.Second)
	env.RegisterWorkflow(workflows.FirmwareRollout)
	env.RegisterActivityWithOptions(func(ctx context.Context, in workflows.RolloutCreateInput) (workflows.RolloutCreateResult, error) {
		if f.create == nil {
			return workflows.RolloutCreateResult{}, errors.New("unexpected RolloutCreate")
		}
		return f.create(ctx, in)
	}, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.RolloutCreate)})
	env.RegisterActivityWithOptions(f.dispatch, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.RolloutDispatch)})
	env.RegisterActivityWithOptions(f.observe, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.RolloutObserve)})
	env.RegisterActivityWithOptions(f.rollback, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.RolloutRollback)})
	env.RegisterActivityWithOptions(f.finish, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.RolloutFinish)})
	env.OnActivity(workflows.ActivityName(workflows.Activities.RolloutObserve), mock.Anything, mock.Anything).Return(f.observe).After(observeEvery)
	return env
}

// rolloutIn is a rollout of total devices in waves 1%,10%,50%,100% with at most 5% failures.
func rolloutIn(t *testing.T, id string, total int64) workflows.RolloutInput {
	t.Helper()
	waves, err := rollout.ParseWaves("1%,10%,50%,100%")
	require.NoError(t, err)
	limit, err := rollout.ParseThreshold("5%")
	require.NoError(t, err)
	return workflows.RolloutInput{RolloutID: id, Total: total, Waves: waves, MaxFailures: limit,
		Firmware:     workflows.FirmwareRef{Version: "2.4.0", URL: "https://fw.example/2.4.0.bin", SHA256: "ab12"},
		PollInterval: time.Second, ObserveFor: 30 * time.Second}
}

func rolloutResult(t *testing.T, env *testsuite.TestWorkflowEnvironment) workflows.RolloutResult {
	t.Helper()
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var res workflows.RolloutResult
	require.NoError(t, env.GetWorkflowResult(&res))
	return res
}

func queryRollout(t *testing.T, env *testsuite.TestWorkflowEnvironment) workflows.RolloutProgress {
	t.Helper()
	v, err := env.QueryWorkflow(workflows.QueryProgress)
	require.NoError(t, err)
	var p workflows.RolloutProgress
	require.NoError(t, v.Get(&p))
	return p
}

func TestFirmwareRolloutDispatchesEachNonEmptyWaveAtItsCutoff(t *testing.T) {
	for _, tc := range []struct {
		total   int64
		cutoffs []int64
		want    [][2]int64 // (wave, cutoff) per RolloutDispatch
	}{
		{50, []int64{1, 5, 25, 50}, [][2]int64{{0, 1}, {1, 5}, {2, 25}, {3, 50}}},
		{100, []int64{1, 10, 50, 100}, [][2]int64{{0, 1}, {1, 10}, {2, 50}, {3, 100}}},
		{10, []int64{1, 1, 5, 10}, [][2]int64{{0, 1}, {2, 5}, {3, 10}}}, // 10% of 10 is the canary again: skipped
		{1, []int64{1, 1, 1, 1}, [][2]int64{{0, 1}}},
	} {
		t.Run(fmt.Sprint(tc.total), func(t *testing.T) {
			in := rolloutIn(t, "ro-cut", tc.total)
			require.Equal(t, tc.cutoffs, rollout.Cutoffs(in.Waves, tc.total))
			f := newRolloutFleet(int(tc.total))
			env := newRolloutEnv(t, f)
			env.ExecuteWorkflow(workflows.FirmwareRollout, in)
			res := rolloutResult(t, env)

			require.Equal(t, tc.want, f.dispatched())
			for _, d := range f.dispatches {
				require.Equal(t, in.Firmware, d.Firmware)
				require.Equal(t, "ro-cut", d.RolloutID)
			}
			require.Equal(t, "completed", res.State)
			require.Equal(t, 4, res.Waves)
			require.Equal(t, tc.total, res.Counts.Succeeded)
			p := queryRollout(t, env)
			require.Equal(t, tc.cutoffs, p.Cutoffs, "the cutoffs are frozen from Total at the start")
			require.Equal(t, []string{"1%", "10%", "50%", "100%"}, p.Waves)
		})
	}
}

func TestFirmwareRolloutGoodRolloutCompletes(t *testing.T) {
	f := newRolloutFleet(100)
	env := newRolloutEnv(t, f)
	env.ExecuteWorkflow(workflows.FirmwareRollout, rolloutIn(t, "ro-good", 100))
	res := rolloutResult(t, env)

	require.Equal(t, "completed", res.State)
	require.Equal(t, 4, res.WavesDone)
	require.Equal(t, 4, res.Waves)
	require.Equal(t, "ro-good", res.RolloutID)
	require.Equal(t, "2.4.0", res.Version)
	require.Equal(t, rollout.Counts{Succeeded: 100}, res.Counts, "counts come from RolloutFinish")
	require.Contains(t, res.Decision, "wave 4/4")
	require.Equal(t, 1, res.Runs)
	require.Equal(t, []string{"completed"}, f.finishStates())
	require.Empty(t, f.rollbacks)
	require.Empty(t, f.observations(true))
	for i, o := range f.observations(false) {
		require.Equal(t, "ro-good", o.JobID, "observation %d", i)
	}
}

func TestFirmwareRolloutWaitsOutTheBake(t *testing.T) {
	const bake = 2 * time.Minute
	f := newRolloutFleet(100)
	env := newRolloutEnv(t, f)
	in := rolloutIn(t, "ro-bake", 100)
	in.Bake = bake
	env.ExecuteWorkflow(workflows.FirmwareRollout, in)
	res := rolloutResult(t, env)

	require.Equal(t, "completed", res.State)
	require.Equal(t, int64(100), res.Counts.Succeeded)
	require.Len(t, f.dispatchAt, 4)
	require.Len(t, f.finishAt, 1)
	require.GreaterOrEqual(t, f.finishAt[0].Sub(testStart), 4*bake, "four waves, each baked")
	for i := 1; i < len(f.dispatchAt); i++ {
		require.GreaterOrEqual(t, f.dispatchAt[i].Sub(f.dispatchAt[i-1]), bake, "wave %d starts only after wave %d baked", i+1, i)
	}
}

func TestFirmwareRolloutPassesThePolicyToTheObservation(t *testing.T) {
	for _, tc := range []struct {
		name                               string
		bake, deviceTimeout, poll, observe time.Duration
		wantTimeout, wantPoll, wantWait    time.Duration
	}{
		{"given", 20 * time.Second, 7 * time.Minute, 3 * time.Second, 45 * time.Second, 7 * time.Minute, 3 * time.Second, 45 * time.Second},
		{"defaults", 0, 0, 0, 0, workflows.DefaultDeviceTimeout, workflows.DefaultRolloutPoll, workflows.DefaultObserveFor},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newRolloutFleet(50)
			env := newRolloutEnv(t, f)
			in := rolloutIn(t, "ro-policy", 50)
			in.Bake, in.DeviceTimeout, in.PollInterval, in.ObserveFor = tc.bake, tc.deviceTimeout, tc.poll, tc.observe
			env.ExecuteWorkflow(workflows.FirmwareRollout, in)
			res := rolloutResult(t, env)
			require.Equal(t, "completed", res.State)

			obs := f.observations(false)
			require.NotEmpty(t, obs)
			for i, o := range obs {
				require.Equal(t, rollout.Policy{Version: "2.4.0", Bake: tc.bake, DeviceTimeout: tc.wantTimeout}, o.Policy, "observation %d", i)
				require.Equal(t, in.MaxFailures, o.MaxFailures)
				require.Equal(t, tc.wantPoll, o.PollInterval)
				require.Equal(t, tc.wantWait, o.MaxWait)
				require.Equal(t, "ro-policy", o.RolloutID)
				require.False(t, o.Rollback)
			}
			require.Equal(t, 0, obs[0].Wave)
			require.Equal(t, 3, obs[len(obs)-1].Wave)
		})
	}
}

// Devices 1, 2 and 3 (all in wave 2 of 100 devices: ranks 1..9) fail to install.
func TestFirmwareRolloutFailureThreshold(t *testing.T) {
	for _, tc := range []struct {
		limit     string
		wantState string
	}{
		{"5%", "rolled_back"}, // 3 of 10 dispatched is 30%
		{"2", "rolled_back"},
		{"3", "completed"}, // exactly at the limit is allowed
		{"50%", "completed"},
	} {
		t.Run(tc.limit, func(t *testing.T) {
			f := newRolloutFleet(100, 1, 2, 3)
			f.rollbackPerPoll = 4
			env := newRolloutEnv(t, f)
			in := rolloutIn(t, "ro-bad", 100)
			var err error
			in.MaxFailures, err = rollout.ParseThreshold(tc.limit)
			require.NoError(t, err)
			env.ExecuteWorkflow(workflows.FirmwareRollout, in)
			res := rolloutResult(t, env)
			require.Equal(t, tc.wantState, res.State)
			require.Equal(t, []string{tc.wantState}, f.finishStates())

			if tc.wantState == "completed" {
				require.Equal(t, 4, res.WavesDone)
				require.Empty(t, f.rollbacks)
				require.Equal(t, rollout.Counts{Succeeded: 97, Failed: 3}, res.Counts)
				require.Len(t, res.Failures, 3)
				return
			}
			require.Equal(t, [][2]int64{{0, 1}, {1, 10}}, f.dispatched(), "wave 3 is never dispatched")
			require.Equal(t, []workflows.RolloutRollbackInput{{RolloutID: "ro-bad", JobID: "ro-bad.rb"}}, f.rollbacks)
			rb := f.observations(true)
			require.Len(t, rb, 3, "10 touched devices come back 4 per observation")
			for _, o := range rb {
				require.Equal(t, "ro-bad.rb", o.JobID)
				require.Equal(t, workflows.DefaultDeviceTimeout, o.Policy.DeviceTimeout)
			}
			require.Equal(t, 2, res.WavesDone)
			require.Contains(t, res.Decision, "stopped in wave 2/4")
			require.Contains(t, res.Decision, "limit of "+tc.limit)
			require.Equal(t, rollout.Counts{RolledBack: 10, Queued: 90}, res.Counts)
			require.NotEmpty(t, res.Reasons)
			require.Contains(t, res.Reasons[len(res.Reasons)-1], "rollback: 10 devices back")
		})
	}
}

// Timeline (each observation takes 5 s, a wave needs three): wave 1 is done at 15 s, then the rollout
// waits for approval.
func TestFirmwareRolloutApproveEachWave(t *testing.T) {
	f := newRolloutFleet(100)
	env := newRolloutEnv(t, f)
	in := rolloutIn(t, "ro-approve", 100)
	in.ApproveEachWave = true
	var early *updateRecord
	var approvals []*updateRecord
	var waiting workflows.RolloutProgress
	var dispatchedBeforeApproval int
	env.RegisterDelayedCallback(func() { early = sendUpdate(env, workflows.UpdateApprove) }, 7*time.Second)
	env.RegisterDelayedCallback(func() {
		waiting = queryRollout(t, env)
		f.mu.Lock()
		dispatchedBeforeApproval = len(f.dispatches)
		f.mu.Unlock()
	}, 50*time.Second)
	for _, at := range []time.Duration{time.Minute, 2 * time.Minute, 3 * time.Minute} {
		env.RegisterDelayedCallback(func() { approvals = append(approvals, sendUpdate(env, workflows.UpdateApprove)) }, at)
	}
	env.ExecuteWorkflow(workflows.FirmwareRollout, in)
	res := rolloutResult(t, env)

	requireRejected(t, early, "not waiting for approval")
	require.Equal(t, "awaiting_approval", waiting.State)
	require.Equal(t, 2, waiting.Wave, "waiting before wave 2")
	require.Contains(t, waiting.Decision, "waits for approval")
	require.Equal(t, 1, dispatchedBeforeApproval)
	require.Len(t, approvals, 3)
	for _, a := range approvals {
		requireAccepted(t, a)
	}
	var at []time.Duration
	for _, ts := range f.dispatchAt {
		at = append(at, ts.Sub(testStart))
	}
	require.Equal(t, []time.Duration{0, time.Minute, 2 * time.Minute, 3 * time.Minute}, at, "each wave after the first waits for its approval")
	require.Equal(t, "completed", res.State)
	require.Equal(t, 4, res.WavesDone)
}

// An operator pauses a rollout that waits for approval, then resumes it: it must still accept the approval.
func TestFirmwareRolloutApprovalAfterPauseAndResume(t *testing.T) {
	f := newRolloutFleet(100)
	env := newRolloutEnv(t, f)
	in := rolloutIn(t, "ro-approve-pause", 100)
	in.ApproveEachWave = true
	var pause, resume, approve *updateRecord
	var afterResume workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { pause = sendUpdate(env, workflows.UpdatePause) }, 30*time.Second)
	env.RegisterDelayedCallback(func() { resume = sendUpdate(env, workflows.UpdateResume) }, 40*time.Second)
	env.RegisterDelayedCallback(func() {
		afterResume = queryRollout(t, env)
		approve = sendUpdate(env, workflows.UpdateApprove)
	}, 50*time.Second)
	// Approve the remaining waves; end a rollout that is stuck anyway so that the test finishes.
	env.RegisterDelayedCallback(func() { sendUpdate(env, workflows.UpdateApprove) }, 2*time.Minute)
	env.RegisterDelayedCallback(func() { sendUpdate(env, workflows.UpdateApprove) }, 3*time.Minute)
	env.RegisterDelayedCallback(func() { sendUpdate(env, workflows.UpdateAbort, workflows.AbortInput{Reason: "stuck"}) }, time.Hour)
	env.ExecuteWorkflow(workflows.FirmwareRollout, in)
	res := rolloutResult(t, env)

	requireAccepted(t, pause)
	requireAccepted(t, resume)
	assert.Equal(t, "awaiting_approval", afterResume.State, "after the resume the rollout waits for approval again")
	require.NotNil(t, approve)
	assert.False(t, approve.rejected, "approve after resume was refused: %v", approve.rejectErr)
	assert.Equal(t, "completed", res.State)
	assert.Equal(t, 4, len(f.dispatches))
}

func TestFirmwareRolloutPauseHoldsTheNextWaveUntilResume(t *testing.T) {
	f := newRolloutFleet(100)
	env := newRolloutEnv(t, f)
	var early, pause, pauseAgain, resume *updateRecord
	var paused workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { early = sendUpdate(env, workflows.UpdateResume) }, 2*time.Second)
	env.RegisterDelayedCallback(func() { pause = sendUpdate(env, workflows.UpdatePause) }, 7*time.Second)
	env.RegisterDelayedCallback(func() { pauseAgain = sendUpdate(env, workflows.UpdatePause) }, 8*time.Second)
	env.RegisterDelayedCallback(func() { paused = queryRollout(t, env) }, 5*time.Minute)
	env.RegisterDelayedCallback(func() { resume = sendUpdate(env, workflows.UpdateResume) }, 10*time.Minute)
	env.ExecuteWorkflow(workflows.FirmwareRollout, rolloutIn(t, "ro-pause", 100))
	res := rolloutResult(t, env)

	requireRejected(t, early, "is not paused")
	requireAccepted(t, pause)
	requireRejected(t, pauseAgain, "already paused")
	requireAccepted(t, resume)
	require.Equal(t, "paused", paused.State)
	require.Equal(t, int64(1), paused.Counts.Succeeded, "wave 1 finished after the pause")
	require.Len(t, f.dispatchAt, 4)
	require.Equal(t, time.Duration(0), f.dispatchAt[0].Sub(testStart))
	require.Equal(t, 10*time.Minute, f.dispatchAt[1].Sub(testStart), "wave 2 starts at the resume")
	require.Equal(t, "completed", res.State)
	require.Equal(t, 4, res.WavesDone)
}

// Timeline: wave 1 is done at 15 s; wave 2 is dispatched at 15 s and observed; the abort comes at 17 s,
// during wave 2's first observation.
func TestFirmwareRolloutAbort(t *testing.T) {
	for _, tc := range []struct {
		name     string
		rollback bool
	}{{"with rollback", true}, {"without rollback", false}} {
		t.Run(tc.name, func(t *testing.T) {
			f := newRolloutFleet(100)
			env := newRolloutEnv(t, f)
			var abort *updateRecord
			env.RegisterDelayedCallback(func() {
				abort = sendUpdate(env, workflows.UpdateAbort, workflows.AbortInput{Rollback: tc.rollback, Reason: "wrong build"})
			}, 17*time.Second)
			env.ExecuteWorkflow(workflows.FirmwareRollout, rolloutIn(t, "ro-abort", 100))
			res := rolloutResult(t, env)

			requireAccepted(t, abort)
			require.Equal(t, "aborted", res.State)
			require.Equal(t, []string{"aborted"}, f.finishStates())
			require.Equal(t, [][2]int64{{0, 1}, {1, 10}}, f.dispatched(), "no wave starts after the abort")
			require.Equal(t, 2, res.WavesDone)
			require.Contains(t, res.Decision, "aborted by the operator: wrong build")
			require.Less(t, f.finishAt[0].Sub(testStart), time.Minute)
			if !tc.rollback {
				require.Empty(t, f.rollbacks)
				require.Empty(t, f.observations(true))
				require.Equal(t, int64(1), res.Counts.Succeeded, "devices keep the firmware they have")
				require.Equal(t, f.finishAt[0].Sub(testStart), 17*time.Second, "the abort interrupts the running observation")
				return
			}
			require.Equal(t, []workflows.RolloutRollbackInput{{RolloutID: "ro-abort", JobID: "ro-abort.rb"}}, f.rollbacks)
			require.NotEmpty(t, f.observations(true))
			require.Equal(t, int64(10), res.Counts.RolledBack, "every touched device went back")
			require.Zero(t, res.Counts.RollingBack)
		})
	}
}

func TestFirmwareRolloutAbortTwiceIsRefused(t *testing.T) {
	f := newRolloutFleet(100)
	env := newRolloutEnv(t, f)
	env.OnActivity(workflows.ActivityName(workflows.Activities.RolloutFinish), mock.Anything, mock.Anything).Return(f.finish).After(time.Minute)
	var abort, again, pause *updateRecord
	env.RegisterDelayedCallback(func() { abort = sendUpdate(env, workflows.UpdateAbort, workflows.AbortInput{}) }, 17*time.Second)
	env.RegisterDelayedCallback(func() {
		again = sendUpdate(env, workflows.UpdateAbort, workflows.AbortInput{Rollback: true})
		pause = sendUpdate(env, workflows.UpdatePause)
	}, 30*time.Second)
	env.ExecuteWorkflow(workflows.FirmwareRollout, rolloutIn(t, "ro-abort2", 100))
	res := rolloutResult(t, env)

	requireAccepted(t, abort)
	requireRejected(t, again, "is being aborted")
	requireRejected(t, pause, "is being aborted")
	require.Equal(t, "aborted", res.State)
	require.Empty(t, f.rollbacks, "the refused second abort must not turn on a rollback")
	require.Equal(t, []string{"aborted"}, f.finishStates())
}

// An abort that arrives while a wave is being dispatched should stop the rollout as soon as the dispatch
// returns, not after another observation (up to ObserveFor).
func TestFirmwareRolloutAbortDuringDispatchSkipsTheObservation(t *testing.T) {
	f := newRolloutFleet(100)
	env := newRolloutEnv(t, f)
	env.OnActivity(workflows.ActivityName(workflows.Activities.RolloutDispatch), mock.Anything, mock.Anything).Return(f.dispatch).After(time.Minute)
	var abort *updateRecord
	env.RegisterDelayedCallback(func() { abort = sendUpdate(env, workflows.UpdateAbort, workflows.AbortInput{Reason: "oops"}) }, 30*time.Second)
	env.ExecuteWorkflow(workflows.FirmwareRollout, rolloutIn(t, "ro-abort-dispatch", 100))
	res := rolloutResult(t, env)

	requireAccepted(t, abort)
	require.Equal(t, "aborted", res.State)
	require.Len(t, f.dispatches, 1)
	assert.Empty(t, f.observes, "nothing to observe for an aborted rollout")
	assert.Equal(t, time.Minute, f.finishAt[0].Sub(testStart), "finish as soon as the dispatch returns")
}

// ContinueAfterEvents 40 and 10 events per observation: a run ends after four observations, in the middle of
// a wave. Each next run resumes the carried wave without dispatching it again.
func TestFirmwareRolloutContinuesAsNewMidRollout(t *testing.T) {
	f := newRolloutFleet(100)
	f.histPerObserve = 10
	in := rolloutIn(t, "ro-can", 100)
	in.ContinueAfterEvents = 40
	dc := converter.GetDefaultDataConverter()
	var carries []workflows.RolloutCarry
	var res workflows.RolloutResult
	runs, clock := 0, testStart
	for {
		runs++
		require.LessOrEqual(t, runs, 6, "the rollout should end within a few runs")
		before := len(f.dispatches)
		env := newRolloutEnv(t, f)
		env.SetStartTime(clock) // the next run starts when the previous one ended
		env.ExecuteWorkflow(workflows.FirmwareRollout, in)
		require.True(t, env.IsWorkflowCompleted())
		clock = env.Now()
		if c := in.Carry; c != nil && c.Dispatched {
			for _, d := range f.dispatches[before:] {
				require.Greater(t, d.Wave, c.Wave, "run %d dispatched the carried wave %d again", runs, c.Wave+1)
			}
		}
		err := env.GetWorkflowError()
		var can *workflow.ContinueAsNewError
		if !errors.As(err, &can) {
			require.NoError(t, err)
			require.NoError(t, env.GetWorkflowResult(&res))
			break
		}
		require.Empty(t, f.finishes, "the rollout is finished only by its last run")
		var next workflows.RolloutInput
		require.NoError(t, dc.FromPayloads(can.Input, &next))
		require.NotNil(t, next.Carry)
		require.Equal(t, runs, next.Carry.Runs)
		require.Equal(t, in.RolloutID, next.RolloutID)
		require.Equal(t, in.Waves, next.Waves)
		carries = append(carries, *next.Carry)
		in = next
	}
	require.NotEmpty(t, carries, "the rollout must have continued as new")
	first := carries[0]
	require.Equal(t, 1, first.Wave, "the first run ends in wave 2")
	require.True(t, first.Dispatched, "in the middle of the wave: dispatched, not yet decided")
	require.Equal(t, int64(1), first.Counts.Succeeded)
	require.Equal(t, int64(9), first.Counts.InProgress)
	require.Contains(t, first.Decision, "wave 1/4 (1%) done")

	require.Equal(t, [][2]int64{{0, 1}, {1, 10}, {2, 50}, {3, 100}}, f.dispatched(), "each wave dispatched exactly once")
	require.Equal(t, "completed", res.State)
	require.Equal(t, 4, res.WavesDone)
	require.Equal(t, runs, res.Runs)
	require.Equal(t, int64(100), res.Counts.Succeeded)
	require.Equal(t, []string{"completed"}, f.finishStates())
}

// Timeline: wave 2 is dispatched at 15 s; its first observation (20 s) moves its 9 devices to installing.
func TestFirmwareRolloutProgressQuery(t *testing.T) {
	f := newRolloutFleet(100)
	env := newRolloutEnv(t, f)
	var before, mid workflows.RolloutProgress
	env.RegisterDelayedCallback(func() { before = queryRollout(t, env) }, time.Second)
	env.RegisterDelayedCallback(func() { mid = queryRollout(t, env) }, 22*time.Second)
	env.ExecuteWorkflow(workflows.FirmwareRollout, rolloutIn(t, "ro-query", 100))
	res := rolloutResult(t, env)
	require.Equal(t, "completed", res.State)

	require.Equal(t, 1, before.Wave)
	require.Equal(t, "observing", before.State)

	require.Equal(t, "ro-query", mid.RolloutID)
	require.Equal(t, "2.4.0", mid.Version)
	require.Equal(t, "observing", mid.State)
	require.Equal(t, 2, mid.Wave)
	require.Equal(t, int64(100), mid.Total)
	require.Equal(t, []int64{1, 10, 50, 100}, mid.Cutoffs)
	require.Equal(t, rollout.Counts{Succeeded: 1, InProgress: 9, Queued: 90}, mid.Counts)
	require.Equal(t, rollout.Counts{InProgress: 9}, mid.WaveCounts)
	require.Equal(t, "wave 1/4 (1%) done: 1 succeeded, 0 failed, 0 skipped", mid.Decision)
	require.Equal(t, 1, mid.Runs)
	require.WithinDuration(t, testStart.Add(20*time.Second), mid.UpdatedAt, 0)

	end := queryRollout(t, env)
	require.Equal(t, "done", end.State)
	require.Equal(t, 4, end.Wave)
	require.Equal(t, int64(100), end.Counts.Succeeded)
}

func TestFirmwareRolloutRejectsInvalidInput(t *testing.T) {
	for _, tc := range []struct {
		name   string
		modify func(*workflows.RolloutInput)
	}{
		{"empty rollout id", func(in *workflows.RolloutInput) { in.RolloutID = "" }},
		{"no firmware", func(in *workflows.RolloutInput) { in.Firmware = workflows.FirmwareRef{} }},
		{"empty target set", func(in *workflows.RolloutInput) { in.Total = 0 }},
		{"no waves", func(in *workflows.RolloutInput) { in.Waves = nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newRolloutFleet(10)
			env := newRolloutEnv(t, f)
			in := rolloutIn(t, "ro-invalid", 10)
			tc.modify(&in)
			env.ExecuteWorkflow(workflows.FirmwareRollout, in)
			requireInvalidInput(t, env)
			require.Empty(t, f.dispatches)
			require.Empty(t, f.finishes)
		})
	}
}

// An abort that arrives while the rollout is being finished (RolloutFinish running with state completed)
// must not be accepted and then ignored.
func TestFirmwareRolloutAbortWhileFinishing(t *testing.T) {
	f := newRolloutFleet(100)
	env := newRolloutEnv(t, f)
	env.OnActivity(workflows.ActivityName(workflows.Activities.RolloutFinish), mock.Anything, mock.Anything).Return(f.finish).After(time.Minute)
	var abort *updateRecord
	// The last wave is decided at 60 s; RolloutFinish runs from 60 s to 120 s.
	env.RegisterDelayedCallback(func() {
		abort = sendUpdate(env, workflows.UpdateAbort, workflows.AbortInput{Rollback: true, Reason: "late"})
	}, 90*time.Second)
	env.ExecuteWorkflow(workflows.FirmwareRollout, rolloutIn(t, "ro-late", 100))
	res := rolloutResult(t, env)

	require.NotNil(t, abort)
	require.Equal(t, []string{"completed"}, f.finishStates())
	require.Empty(t, f.rollbacks)
	if abort.accepted {
		assert.Equal(t, "aborted", res.State, "abort (rollback) was accepted (%v) but the rollout ended %s", abort.result, res.State)
	}
}
