package activities

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
	"github.com/fleetflow/fleetflow/workflows"
)

// scriptedProgress is the fake store with connect progress answered from a script, poll by poll.
type scriptedProgress struct {
	*fleettest.Store
	progress []fleet.ConnectProgress
	polls    int
}

func (f *scriptedProgress) ConnectProgress(context.Context, string, int) (fleet.ConnectProgress, error) {
	p := f.progress[min(f.polls, len(f.progress)-1)]
	f.polls++
	return p, nil
}

func TestProvisionBatchMapsCountsAndPermanentErrors(t *testing.T) {
	f := fleettest.New()
	f.AddDevice("d-2", fleettest.Device{})
	f.Stage("op", []fleettest.StagedRow{{Line: 2, ID: "d-1"}, {Line: 3, ID: "d-2"}, {Line: 4, ID: "bad id"}, {Line: 5, ID: "d-3"}})
	a := &Activities{Provision: f}
	c, err := a.ProvisionBatch(context.Background(), workflows.ProvisionBatchInput{Op: "op", First: 0, Last: 4})
	require.NoError(t, err)
	require.Equal(t, fleet.ProvisionCounts{Created: 2, Existing: 1, Invalid: 1}, c)

	// Not staged (the store says so) and staged rows lost (scripted) cannot be fixed by retrying.
	_, err = a.ProvisionBatch(context.Background(), workflows.ProvisionBatchInput{Op: "never-staged", First: 0, Last: 1})
	var notStaged *temporal.ApplicationError
	require.True(t, errors.As(err, &notStaged))
	require.True(t, notStaged.NonRetryable())
	for _, cause := range []error{fleet.ErrStagingLost, fleet.ErrOperationNotStaged} {
		f := fleettest.New()
		f.Fail = map[string]error{"ProvisionBatch": fmt.Errorf("provision op: %w", cause)}
		a = &Activities{Provision: f}
		_, err = a.ProvisionBatch(context.Background(), workflows.ProvisionBatchInput{Op: "op"})
		var appErr *temporal.ApplicationError
		require.True(t, errors.As(err, &appErr))
		require.True(t, appErr.NonRetryable(), "%v cannot be fixed by retrying", cause)
		require.Equal(t, workflows.ErrTypeNotStaged, appErr.Type())
	}
	f = fleettest.New()
	f.Fail = map[string]error{"ProvisionBatch": errors.New("connection reset")}
	a = &Activities{Provision: f}
	_, err = a.ProvisionBatch(context.Background(), workflows.ProvisionBatchInput{Op: "op"})
	var appErr *temporal.ApplicationError
	require.False(t, errors.As(err, &appErr) && appErr.NonRetryable(), "a transient error stays retryable")
}

func TestWaitConnectedReturnsWhenAllReportedOrTimeIsUp(t *testing.T) {
	run := func(f *scriptedProgress, maxWait time.Duration) fleet.ConnectProgress {
		var s testsuite.WorkflowTestSuite
		env := s.NewTestActivityEnvironment()
		a := &Activities{Provision: f, PollInterval: time.Millisecond}
		env.RegisterActivity(a)
		v, err := env.ExecuteActivity(a.WaitConnected, workflows.WaitConnectedInput{Op: "op", MaxWait: maxWait})
		require.NoError(t, err)
		var st fleet.ConnectProgress
		require.NoError(t, v.Get(&st))
		return st
	}
	f := &scriptedProgress{Store: fleettest.New(), progress: []fleet.ConnectProgress{{Created: 10, Reported: 3}, {Created: 10, Reported: 10}}}
	st := run(f, time.Minute)
	require.Equal(t, int64(10), st.Reported)
	require.Equal(t, 2, f.polls)

	f = &scriptedProgress{Store: fleettest.New(), progress: []fleet.ConnectProgress{{Created: 10, Reported: 3, Missing: []string{"d"}}}}
	st = run(f, 0)
	require.Equal(t, int64(3), st.Reported)
	require.Equal(t, []string{"d"}, st.Missing)
	require.Equal(t, 1, f.polls, "with no time left it reports at once")
}

func TestFinishProvisionDropsStagingAndSamplesInvalidRows(t *testing.T) {
	f := fleettest.New()
	f.AddDevice("d-2", fleettest.Device{})
	f.Stage("op-1", []fleettest.StagedRow{{Line: 2, ID: "d-1"}, {Line: 3, ID: "d-2"}, {Line: 4, ParseError: "expected 3 fields, found 2"}})
	a := &Activities{Provision: f}
	_, err := a.ProvisionBatch(context.Background(), workflows.ProvisionBatchInput{Op: "op-1", First: 0, Last: 3})
	require.NoError(t, err)
	res, err := a.FinishProvision(context.Background(), "op-1")
	require.NoError(t, err)
	require.NotContains(t, f.Staged, "op-1", "the staged rows (credential digests) are dropped")
	require.Equal(t, []fleet.RowResult{{Line: 4, Outcome: fleet.RowInvalid, Reason: "expected 3 fields, found 2"}}, res.InvalidSample,
		"invalid rows only, not the existing device")
}

// A stopping worker ends the polling waits with their latest observation, long before MaxWait, so that the
// workflow polls again at once on another worker.
func TestPollingWaitsReturnWhenTheWorkerStops(t *testing.T) {
	stopped := make(chan struct{})
	close(stopped)
	var s testsuite.WorkflowTestSuite

	env := s.NewTestActivityEnvironment()
	env.SetWorkerStopChannel(stopped)
	f := &scriptedProgress{Store: fleettest.New(), progress: []fleet.ConnectProgress{{Created: 10, Reported: 3}}}
	a := &Activities{Provision: f, PollInterval: time.Hour}
	env.RegisterActivity(a)
	v, err := env.ExecuteActivity(a.WaitConnected, workflows.WaitConnectedInput{Op: "op", MaxWait: 24 * time.Hour})
	require.NoError(t, err)
	var st fleet.ConnectProgress
	require.NoError(t, v.Get(&st))
	require.Equal(t, int64(3), st.Reported)
	require.Equal(t, 1, f.polls)

	env = s.NewTestActivityEnvironment()
	env.SetWorkerStopChannel(stopped)
	jobs := fleettest.New()
	jobs.Acks = []fleet.AckProgress{{Acked: 1, Waiting: 3, WaitingOnline: 2}}
	a = &Activities{Jobs: jobs}
	env.RegisterActivity(a)
	v, err = env.ExecuteActivity(a.JobCollectAcks, workflows.JobCollectAcksInput{JobID: "j", Keys: []string{"led"}, MaxWait: 24 * time.Hour})
	require.NoError(t, err)
	var acks workflows.JobCollectAcksResult
	require.NoError(t, v.Get(&acks))
	require.Equal(t, workflows.JobCollectAcksResult{Acked: 1, Waiting: 3, WaitingOnline: 2}, acks)
	require.Equal(t, 1, jobs.AckCalls)
}

// AwaitStaged returns as soon as the staged-rows cursor moves past what the workflow knows or staging ends,
// and turns an abandoned staging into a failure no retry can fix.
func TestAwaitStagedFollowsTheCursor(t *testing.T) {
	ctx := context.Background()
	f := fleettest.New()
	f.Stage("op", []fleettest.StagedRow{{Line: 2, ID: "d-1"}, {Line: 3, ID: "d-2"}})
	f.Staging["op"] = "open"
	a := &Activities{Provision: f}
	st, err := a.AwaitStaged(ctx, workflows.AwaitStagedInput{Op: "op", After: 1})
	require.NoError(t, err)
	require.Equal(t, fleet.Staged{Rows: 2}, st, "more than After rows: at once")

	// Nothing new yet: it waits until the next chunk is staged (here while it polls).
	type answer struct {
		st  fleet.Staged
		err error
	}
	done := make(chan answer)
	go func() {
		st, err := a.AwaitStaged(ctx, workflows.AwaitStagedInput{Op: "op", After: 2})
		done <- answer{st, err}
	}()
	f.Mu.Lock() // the last chunk: its rows and the end of the staging at once, as one commit
	f.Staged["op"] = append(f.Staged["op"], fleettest.StagedRow{Line: 4, ID: "d-3"})
	delete(f.Staging, "op")
	f.Mu.Unlock()
	got := <-done
	require.NoError(t, got.err)
	require.Equal(t, fleet.Staged{Rows: 3, Done: true}, got.st)

	f.Mu.Lock()
	f.Staging["op"] = "abandoned"
	f.Mu.Unlock()
	_, err = a.AwaitStaged(ctx, workflows.AwaitStagedInput{Op: "op", After: 3})
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr))
	require.True(t, appErr.NonRetryable())
	require.Equal(t, workflows.ErrTypeStagingAbandoned, appErr.Type())
	_, err = a.AwaitStaged(ctx, workflows.AwaitStagedInput{Op: "never", After: 0})
	require.True(t, errors.As(err, &appErr))
	require.Equal(t, workflows.ErrTypeNotStaged, appErr.Type())
}
