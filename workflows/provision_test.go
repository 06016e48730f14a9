package workflows

import (
	"context"
	"errors"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// fakeActs stands in for the registry-backed activities: every row of a batch with an even line is
// created, every row divisible by 7 is invalid, the rest exist.
type fakeActs struct {
	mu       sync.Mutex
	batches  []ProvisionBatchInput
	maxOpen  int
	open     int
	reported []int64 // successive Reported values WaitConnected returns
	polls    int
	// staging: successive answers of AwaitStaged (the last repeats); staged is the latest rows answered.
	staging  []fleet.Staged
	awaits   []AwaitStagedInput
	staged   int64
	beyond   []ProvisionBatchInput // batches that reached past the rows staged when they started
	abandons bool                  // AwaitStaged fails as abandoned once the script is used up
}

func countsFor(r ProvisionBatchInput) fleet.ProvisionCounts {
	var c fleet.ProvisionCounts
	for l := r.First; l < r.Last; l++ {
		switch {
		case l%7 == 0:
			c.Invalid++
		case l%2 == 0:
			c.Created++
		default:
			c.Existing++
		}
	}
	return c
}

func (f *fakeActs) batch(_ context.Context, r ProvisionBatchInput) (fleet.ProvisionCounts, error) {
	f.mu.Lock()
	f.batches = append(f.batches, r)
	if f.staging != nil && r.Last > f.staged {
		f.beyond = append(f.beyond, r)
	}
	f.open++
	f.maxOpen = max(f.maxOpen, f.open)
	f.mu.Unlock()
	defer func() { f.mu.Lock(); f.open--; f.mu.Unlock() }()
	return countsFor(r), nil
}

func (f *fakeActs) wait(_ context.Context, r WaitConnectedInput) (fleet.ConnectProgress, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := min(f.polls, len(f.reported)-1)
	f.polls++
	st := fleet.ConnectProgress{Created: 100, Connected: f.reported[i], Reported: f.reported[i]}
	if st.Reported < st.Created {
		st.Missing = []string{"dev-099"}
	}
	return st, nil
}

func (f *fakeActs) await(_ context.Context, r AwaitStagedInput) (fleet.Staged, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := len(f.awaits)
	f.awaits = append(f.awaits, r)
	if f.abandons && i >= len(f.staging) {
		return fleet.Staged{}, temporal.NewNonRetryableApplicationError("staging abandoned", ErrTypeStagingAbandoned, nil)
	}
	st := f.staging[min(i, len(f.staging)-1)]
	f.staged = st.Rows
	return st, nil
}

func newEnv(t *testing.T, f *fakeActs) *testsuite.TestWorkflowEnvironment {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(ProvisionFleet)
	env.RegisterActivityWithOptions(f.batch, activity.RegisterOptions{Name: ActivityName(Activities.ProvisionBatch)})
	env.RegisterActivityWithOptions(f.wait, activity.RegisterOptions{Name: ActivityName(Activities.WaitConnected)})
	env.RegisterActivityWithOptions(f.await, activity.RegisterOptions{Name: ActivityName(Activities.AwaitStaged)})
	env.RegisterActivityWithOptions(func(context.Context, string) (FinishProvisionResult, error) {
		return FinishProvisionResult{InvalidSample: []fleet.RowResult{{Line: 0, ID: "BAD", Outcome: "invalid", Reason: "invalid device id"}}}, nil
	}, activity.RegisterOptions{Name: ActivityName(Activities.FinishProvision)})
	env.SetTestTimeout(30 * time.Second)
	return env
}

func TestProvisionFleetCoversEveryLineOnceWithinTheWindow(t *testing.T) {
	f := &fakeActs{}
	env := newEnv(t, f)
	env.ExecuteWorkflow(ProvisionFleet, ProvisionInput{Op: "op1", Rows: 12345, BatchSize: 1000, Window: 3})
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var res ProvisionResult
	require.NoError(t, env.GetWorkflowResult(&res))

	require.Len(t, f.batches, 13)
	sort.Slice(f.batches, func(i, j int) bool { return f.batches[i].First < f.batches[j].First })
	var next int64
	var want fleet.ProvisionCounts
	for _, b := range f.batches {
		require.Equal(t, next, b.First, "batches must tile the manifest without gaps or overlap")
		require.LessOrEqual(t, b.Last-b.First, int64(1000))
		next = b.Last
		want.Add(countsFor(b))
	}
	require.Equal(t, int64(12345), next)
	require.Equal(t, want, res.Counts)
	require.Equal(t, int64(12345), res.Counts.Total())
	require.Nil(t, res.Connect, "no await was asked for")
	require.Len(t, res.InvalidSample, 1)
}

func TestProvisionFleetContinuesAsNewWithItsCursorAndCounts(t *testing.T) {
	f := &fakeActs{}
	env := newEnv(t, f)
	env.ExecuteWorkflow(ProvisionFleet, ProvisionInput{Op: "op2", Rows: 10000, BatchSize: 1000, Window: 2, BatchesPerRun: 4})
	require.True(t, env.IsWorkflowCompleted())
	err := env.GetWorkflowError()
	var can *workflow.ContinueAsNewError
	require.True(t, errors.As(err, &can), "expected continue-as-new, got %v", err)
	require.Len(t, f.batches, 4)

	// Decode the next run's input and run it to the end, as the server would.
	var next ProvisionInput
	dc := converter.GetDefaultDataConverter()
	require.NoError(t, dc.FromPayloads(can.Input, &next))
	require.Equal(t, int64(4000), next.Next)
	require.Equal(t, int64(4000), next.Counts.Total())
	require.Equal(t, 1, next.Runs)

	env2 := newEnv(t, f)
	env2.ExecuteWorkflow(ProvisionFleet, next)
	require.True(t, errors.As(env2.GetWorkflowError(), &can))
	require.NoError(t, dc.FromPayloads(can.Input, &next))
	require.Equal(t, int64(8000), next.Next)
	env3 := newEnv(t, f)
	env3.ExecuteWorkflow(ProvisionFleet, next)
	require.NoError(t, env3.GetWorkflowError())
	var res ProvisionResult
	require.NoError(t, env3.GetWorkflowResult(&res))
	require.Equal(t, int64(10000), res.Counts.Total())
	require.Equal(t, 3, res.Runs)
	require.Len(t, f.batches, 10)
}

func TestProvisionFleetAwaitsConnectUntilAllReported(t *testing.T) {
	f := &fakeActs{reported: []int64{10, 60, 100}}
	env := newEnv(t, f)
	env.ExecuteWorkflow(ProvisionFleet, ProvisionInput{Op: "op3", Rows: 200, BatchSize: 100, AwaitConnect: 10 * time.Minute})
	require.NoError(t, env.GetWorkflowError())
	var res ProvisionResult
	require.NoError(t, env.GetWorkflowResult(&res))
	require.NotNil(t, res.Connect)
	require.Equal(t, int64(100), res.Connect.Reported)
	require.Equal(t, 3, f.polls)
	require.Empty(t, res.Connect.Missing)
}

func TestProvisionFleetAwaitConnectGivesUpAtTheDeadline(t *testing.T) {
	f := &fakeActs{reported: []int64{40}}
	env := newEnv(t, f)
	// The fake returns at once, so the workflow's timer-free loop must still end: WaitConnected is asked to
	// wait, and the test environment's clock only moves with timers, so bound polls by the deadline.
	env.OnActivity(ActivityName(Activities.WaitConnected), mock.Anything, mock.Anything).Return(
		func(ctx context.Context, r WaitConnectedInput) (fleet.ConnectProgress, error) {
			f.mu.Lock()
			f.polls++
			f.mu.Unlock()
			return fleet.ConnectProgress{Created: 100, Connected: 50, Reported: 40, Missing: []string{"dev-001"}}, nil
		}).After(time.Second)
	env.ExecuteWorkflow(ProvisionFleet, ProvisionInput{Op: "op4", Rows: 200, BatchSize: 100, AwaitConnect: 30 * time.Second})
	require.NoError(t, env.GetWorkflowError())
	var res ProvisionResult
	require.NoError(t, env.GetWorkflowResult(&res))
	require.Equal(t, int64(40), res.Connect.Reported)
	require.Equal(t, []string{"dev-001"}, res.Connect.Missing)
	require.GreaterOrEqual(t, f.polls, 2)
	require.LessOrEqual(t, f.polls, 40)
}

func TestProvisionFleetFailsOnANonRetryableBatchError(t *testing.T) {
	f := &fakeActs{}
	env := newEnv(t, f)
	env.OnActivity(ActivityName(Activities.ProvisionBatch), mock.Anything, mock.Anything).Return(fleet.ProvisionCounts{},
		temporal.NewNonRetryableApplicationError("not staged", ErrTypeNotStaged, nil))
	env.ExecuteWorkflow(ProvisionFleet, ProvisionInput{Op: "op5", Rows: 3000, BatchSize: 1000})
	err := env.GetWorkflowError()
	require.Error(t, err)
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr))
	require.Equal(t, ErrTypeNotStaged, appErr.Type())
}

func TestProvisionFleetProgressQueryAndDetails(t *testing.T) {
	f := &fakeActs{}
	env := newEnv(t, f)
	env.OnActivity(ActivityName(Activities.ProvisionBatch), mock.Anything, mock.Anything).Return(
		func(ctx context.Context, r ProvisionBatchInput) (fleet.ProvisionCounts, error) {
			return countsFor(r), nil
		}).After(time.Minute)
	var mid ProvisionProgress
	env.RegisterDelayedCallback(func() {
		v, err := env.QueryWorkflow(QueryProgress)
		require.NoError(t, err)
		require.NoError(t, v.Get(&mid))
	}, 90*time.Second)
	env.ExecuteWorkflow(ProvisionFleet, ProvisionInput{Op: "op6", Rows: 4000, BatchSize: 1000, Window: 1})
	require.NoError(t, env.GetWorkflowError())
	require.Equal(t, "provisioning", mid.Phase)
	require.Equal(t, int64(1000), mid.Counts.Total(), "one batch done after 90 s with a 1-minute batch and window 1")
	require.Equal(t, int64(4000), mid.Rows)
}

func TestProvisionFleetRejectsBadInput(t *testing.T) {
	env := newEnv(t, &fakeActs{})
	env.ExecuteWorkflow(ProvisionFleet, ProvisionInput{Rows: 10})
	require.Error(t, env.GetWorkflowError())
}

func TestProvisionDetailsReadLikeTheIssueAsks(t *testing.T) {
	s := provisionDetails(ProvisionProgress{Phase: "provisioning", Rows: 1000000, Counts: fleet.ProvisionCounts{Created: 411000, Invalid: 1000}})
	require.Contains(t, s, "412,000 / 1,000,000")
}

// A run whose batch fails for good drops its staged rows (they hold credential digests) before it ends.
func TestProvisionFleetDropsItsStagingWhenItFails(t *testing.T) {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(ProvisionFleet)
	env.RegisterActivityWithOptions(func(_ context.Context, r ProvisionBatchInput) (fleet.ProvisionCounts, error) {
		if r.First == 2000 {
			return fleet.ProvisionCounts{}, temporal.NewNonRetryableApplicationError("staging lost", ErrTypeNotStaged, nil)
		}
		return countsFor(r), nil
	}, activity.RegisterOptions{Name: ActivityName(Activities.ProvisionBatch)})
	var mu sync.Mutex
	var dropped []string
	env.RegisterActivityWithOptions(func(_ context.Context, op string) (FinishProvisionResult, error) {
		mu.Lock()
		defer mu.Unlock()
		dropped = append(dropped, op)
		return FinishProvisionResult{}, nil
	}, activity.RegisterOptions{Name: ActivityName(Activities.FinishProvision)})
	env.ExecuteWorkflow(ProvisionFleet, ProvisionInput{Op: "op-fail", Rows: 5000, BatchSize: 1000, Window: 2})
	require.True(t, env.IsWorkflowCompleted())
	require.Error(t, env.GetWorkflowError())
	require.Equal(t, []string{"op-fail"}, dropped, "the failed run drops its staging once")
}

// A workflow started while the CLI still stages follows the staged-rows cursor: batches tile the whole
// manifest, never reach past the rows staged, are whole until staging ends, and the result counts every row.
func TestProvisionFleetFollowsTheStaging(t *testing.T) {
	f := &fakeActs{staged: 2500, staging: []fleet.Staged{{Rows: 5000}, {Rows: 9000}, {Rows: 12345, Done: true}}}
	env := newEnv(t, f)
	env.ExecuteWorkflow(ProvisionFleet, ProvisionInput{Op: "op-stream", Rows: 2500, Staging: true, BatchSize: 1000, Window: 3})
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var res ProvisionResult
	require.NoError(t, env.GetWorkflowResult(&res))

	require.Empty(t, f.beyond, "no batch may reach past the staged rows")
	sort.Slice(f.batches, func(i, j int) bool { return f.batches[i].First < f.batches[j].First })
	var next int64
	for i, b := range f.batches {
		require.Equal(t, next, b.First, "batches must tile the manifest without gaps or overlap")
		if i < len(f.batches)-1 {
			require.Equal(t, int64(1000), b.Last-b.First, "only the last batch may be partial")
		}
		next = b.Last
	}
	require.Equal(t, int64(12345), next)
	require.Equal(t, int64(12345), res.Rows)
	require.Equal(t, int64(12345), res.Counts.Total())
	require.Len(t, f.awaits, 3)
	require.Equal(t, []int64{2500, 5000, 9000}, []int64{f.awaits[0].After, f.awaits[1].After, f.awaits[2].After})
}

// A staging that stops (its CLI killed) fails the run once the batches already staged have ended, and the
// failed run drops its staged rows.
func TestProvisionFleetFailsWhenTheStagingIsAbandoned(t *testing.T) {
	f := &fakeActs{staged: 2000, staging: []fleet.Staged{{Rows: 4000}}, abandons: true}
	env := newEnv(t, f)
	var dropped int
	env.OnActivity(ActivityName(Activities.FinishProvision), mock.Anything, mock.Anything).Return(
		func(context.Context, string) (FinishProvisionResult, error) {
			dropped++
			return FinishProvisionResult{}, nil
		})
	env.ExecuteWorkflow(ProvisionFleet, ProvisionInput{Op: "op-dead", Rows: 2000, Staging: true, BatchSize: 1000, Window: 4})
	require.True(t, env.IsWorkflowCompleted())
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(env.GetWorkflowError(), &appErr), "got %v", env.GetWorkflowError())
	require.Equal(t, ErrTypeStagingAbandoned, appErr.Type())
	require.Empty(t, f.beyond)
	require.Len(t, f.batches, 4, "the rows staged before the staging stopped are provisioned")
	require.Equal(t, 1, dropped, "the failed run drops its staging")
}

// A run that continues as new while the staging goes on carries the cursor and the staging state over.
func TestProvisionFleetContinuesAsNewWhileStaging(t *testing.T) {
	f := &fakeActs{staged: 3000, staging: []fleet.Staged{{Rows: 6000}}}
	env := newEnv(t, f)
	env.ExecuteWorkflow(ProvisionFleet, ProvisionInput{Op: "op-can", Rows: 3000, Staging: true, BatchSize: 1000, Window: 2, BatchesPerRun: 4})
	var can *workflow.ContinueAsNewError
	require.True(t, errors.As(env.GetWorkflowError(), &can), "expected continue-as-new, got %v", env.GetWorkflowError())
	var next ProvisionInput
	require.NoError(t, converter.GetDefaultDataConverter().FromPayloads(can.Input, &next))
	require.True(t, next.Staging)
	require.Equal(t, int64(4000), next.Next)
	require.GreaterOrEqual(t, next.Rows, int64(4000))
	require.Empty(t, f.beyond)

	f.staging = []fleet.Staged{{Rows: 7500, Done: true}}
	f.awaits = nil
	env2 := newEnv(t, f)
	env2.ExecuteWorkflow(ProvisionFleet, next)
	require.NoError(t, env2.GetWorkflowError())
	var res ProvisionResult
	require.NoError(t, env2.GetWorkflowResult(&res))
	require.Equal(t, int64(7500), res.Counts.Total())
	require.Equal(t, 2, res.Runs)
}
